"""Every figure in ``PLOTS`` reads on its own, checked through matplotlib's objects on small
synthetic data (no model): heatmap axes carry tick labels and a colour bar with a unit, signed
maps are diverging and centred on 0 with one symmetric scale for the figure, no two texts
overlap or fall off the figure, layer ticks are readable, every panel names its axes, and
rollout shows the non-sink regions."""

from __future__ import annotations

import functools
import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_rgb

from at_probe.runs.plotting import PLOTS

REGIONS = ["sink", "template", "doc 01", "doc 02", "doc 03", "instruction"]
CONDITIONS = ["baseline", "paper", "placebo"]


def _csv(rows: list[dict]) -> pd.DataFrame:
    """The frame as ``analyses/figures.py`` reads it back (empty regions become NaN)."""
    return pd.read_csv(io.StringIO(pd.DataFrame(rows).to_csv(index=False)))


def _profile(measure: str, rng: np.random.Generator) -> pd.DataFrame:
    """30 layers (SmolLM2's count: its labels ran together) of absolute and difference panels."""
    base = {(l, r): 0.1 + rng.random() for l in range(30) for r in REGIONS}  # absolute values stay > 0
    rows = []
    for cond in CONDITIONS:
        shift = np.zeros(len(base)) if cond == "baseline" else rng.normal(0, 0.05, len(base))
        rows += [{"condition": cond, "layer": l, "region": r, "value": v + s, "measure": measure}
                 for ((l, r), v), s in zip(base.items(), shift)]
    frame = pd.DataFrame(rows)
    for cond in CONDITIONS[1:]:
        d = frame[frame.condition == cond].copy()
        d["value"] = d["value"].to_numpy() - frame[frame.condition == "baseline"]["value"].to_numpy()
        rows += d.assign(condition=f"{cond} - baseline").to_dict("records")
    return _csv(rows)


def _region_mass(condition: str, rng: np.random.Generator) -> pd.DataFrame:
    """30 layers (SmolLM2's: its title ran into the panel titles) whose ranges differ tenfold,
    so per-panel scaling would show."""
    signed = " - " in condition
    return _csv([{"condition": condition, "layer": l, "from_region": f, "region": t,
                  "value": (rng.normal() if signed else rng.random()) * 10.0 ** -(l % 3)}
                 for l in range(30) for f in REGIONS for t in REGIONS])


def _forest(rng: np.random.Generator, **columns) -> dict:
    mean = rng.normal(0, 0.02)
    return {**columns, "mean": mean, "lo": mean - 0.01, "hi": mean + 0.01, "n": 20}


def _corpus(measures: list[str], by_region: bool, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for cond in ("paper - baseline", "placebo - baseline"):
        for m in measures:
            for l in range(8):
                for r in REGIONS if by_region else [""]:
                    rows.append({"kind": "difference", "condition": cond, "measure": m, "layer": l,
                                 "region": r, **_forest(rng), "excludes_zero": False})
    return _csv(rows)


def _frames() -> dict[str, pd.DataFrame]:
    """Synthetic data in each ``PLOTS`` entry's CSV layout."""
    rng = np.random.default_rng(0)
    rollout = [{"condition": c, "layer": l, "region": r,
                "value": 0.997 if r == "sink" else 10.0 ** -(3 + REGIONS.index(r))}
               for c in CONDITIONS for l in range(2) for r in REGIONS]
    knock = [{"condition": c, "metric": m, "band": b, "region": r,
              "value": rng.random() if m == "kl" else rng.normal(0, 0.1 if c == "baseline" else 1.0)}
             for c, metrics in (("baseline", ("kl", "nll_delta")), ("paper", ("kl", "nll_delta")),
                                ("baseline (linear estimate)", ("nll_delta",)))
             for m in metrics for b in ("0-9", "10-19", "20-29") for r in REGIONS]
    gains = ([{"panel": "setting", "bucket": b, "label": f"al_{k}_be_01_lay_2", "mean_gain": g,
               "lo": g - 2, "hi": g + 2} for b in (800, 1900) for k, g in enumerate(rng.normal(0, 5, 6))]
             + [{"panel": "headline", "bucket": b, "label": lab, "mean_gain": g, "lo": g - 3, "hi": g + 3}
                for b in (800, 1900) for lab, g in (("oracle", 25.0), ("held-out", 5.0), ("control", 0.0))])
    paired = [_forest(rng, comparison=c, setting=f"paper:alpha={a},beta=0.5,k=2", metric=m)
              for c in ("vs baseline", "vs placebo") for a in (1.0, 1.5)
              for m in ("rougeL", "summary_nll", "repetition_4gram", "novel_bigrams")]
    roles = [_forest(rng, comparison=c, metric=m, bucket=b)
             for c in ("paper_selected - baseline", "paper_selected - placebo_selected")
             for m in ("semantic_similarity", "rougeL", "summary_nll") for b in ("all", "800", "1900")]
    agreement = [{"doc_id": d, "band": b, "region": r,
                  "exact": rng.normal(0, 0.1), "estimate": rng.normal(0, 0.1)}
                 for d in range(3) for b in ("0-9", "10-19") for r in REGIONS]
    long_pairs = [_forest(rng, comparison=c, metric=m, bucket=b)
                  for c in ("sra - baseline", "paper_example - placebo_example")
                  for m in ("exact", "logprob") for b in ("all", "1024", "2048")]
    accuracy = [{"task": t, "condition": c, "length": n, "depth": d, "accuracy": rng.random()}
                for t in ("passkey", "kv") for c in ("baseline", "sra") for n in (1024, 2048)
                for d in (0.1, 0.5, 0.9)]
    needle = [{"condition": c, "length": n, "layer": l, "needle_mass": rng.random(), "needle_flow": rng.random()}
              for c in ("baseline", "sra") for n in (1024, 2048) for l in range(30)]
    return {
        "longctx_paired": _csv(long_pairs),
        "longctx_accuracy": _csv(accuracy),
        "longctx_replies": _csv([{k: v for k, v in r.items() if k != "accuracy"} | {"reply_match": r["accuracy"]}
                                 for r in accuracy]),
        "longctx_needle": _csv(needle),
        "longctx_knockout": _csv([{"condition": r["condition"], "length": r["length"], "layer": r["layer"],
                                   "needle_knockout": -r["needle_mass"]} for r in needle]),
        "attribution_agreement": _csv(agreement),
        "setting_gains": _csv(gains),
        "xsum_paired": _csv(paired),
        "xsum_roles": _csv(roles),
        "methods_compared": _csv(roles),
        "final_token_profile": _profile("final_token_profile", rng),
        "final_token_value_profile": _profile("final_token_value_profile", rng),
        "region_mass": _region_mass("baseline", rng),
        "region_mass_diff": _region_mass("paper - baseline", rng),
        "layer_measures": _csv([{"condition": c, "measure": m, "layer": l, "value": rng.random()}
                                for c in CONDITIONS for m in ("sink_mass", "entropy", "distance")
                                for l in range(30)]),
        "rollout": _csv(rollout),
        "knockout": _csv(knock),
        "corpus_profile_diff": _corpus(["final_token_profile"], True, rng),
        "corpus_value_profile_diff": _corpus(["final_token_value_profile"], True, rng),
        "corpus_layer_measures_diff": _corpus(["sink_mass", "entropy", "distance"], False, rng),
        "corpus_attribution_diff": _corpus(["attribution_nll"], True, rng),
    }


FRAMES = _frames()


@functools.cache
def _drawn(name: str):
    """The figure of ``PLOTS[name]`` on the synthetic data, drawn once (text extents final)."""
    fig = PLOTS[name](FRAMES[name])
    fig.canvas.draw()
    return fig


@pytest.fixture(scope="module", autouse=True)
def _close_figures():
    """Every plot's figure stays open for the module's tests (drawn once), then all close."""
    with plt.rc_context({"figure.max_open_warning": len(PLOTS) + 10}):
        yield
    _drawn.cache_clear()
    plt.close("all")


@pytest.fixture(params=sorted(PLOTS))
def drawn(request):
    """``(name, figure)`` for every entry of ``PLOTS``."""
    return request.param, _drawn(request.param)


def _colorbars(fig) -> list:
    return [m.colorbar for ax in fig.axes for m in ax.collections if isinstance(m, QuadMesh) and m.colorbar]


def _heatmaps(fig) -> list[QuadMesh]:
    """Data meshes: every QuadMesh outside the colour bars' own axes."""
    bar_axes = {cb.ax for cb in _colorbars(fig)}
    return [m for ax in fig.axes if ax not in bar_axes for m in ax.collections if isinstance(m, QuadMesh)]


def _labels(axis) -> list:
    """Tick labels drawn on ``axis``: visible, non-empty, inside the view."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks()
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


def _is_number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))
    except ValueError:
        return False
    return True


def _lightness(rgb) -> float:
    r, g, b = to_rgb(rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_every_plot_has_synthetic_data():
    assert set(FRAMES) == set(PLOTS), "a new figure type needs synthetic data here"


def test_heatmap_axes_have_tick_labels_and_a_colour_bar_with_a_unit(drawn):
    name, fig = drawn
    meshes = _heatmaps(fig)
    bars = _colorbars(fig)
    for mesh in meshes:
        ax = mesh.axes
        assert _labels(ax.xaxis) and _labels(ax.yaxis), f"{name}: '{ax.get_title()}' lacks tick labels"
        shown = [cb for cb in bars if (cb.norm.vmin, cb.norm.vmax, cb.cmap.name)
                 == (mesh.norm.vmin, mesh.norm.vmax, mesh.cmap.name)]
        assert shown, f"{name}: heatmap '{ax.get_title()}' has no colour bar showing its scale"
        assert all(cb.ax.get_ylabel() or cb.ax.get_xlabel() for cb in shown), f"{name}: colour bar, no unit"


@pytest.mark.parametrize("name", ["region_mass", "region_mass_diff", "final_token_profile", "knockout"])
def test_region_axes_name_every_region(name):
    for mesh in _heatmaps(_drawn(name)):
        assert [t.get_text() for t in mesh.axes.get_xticklabels()] == REGIONS
        if name.startswith("region_mass"):
            assert [t.get_text() for t in mesh.axes.get_yticklabels()] == REGIONS


def test_panels_of_one_quantity_share_one_scale_and_signed_ones_are_centred_and_diverging(drawn):
    name, fig = drawn
    meshes = _heatmaps(fig)
    signed = [m for m in meshes if np.nanmin(m.get_array()) < 0]
    unsigned = [m for m in meshes if m not in signed]
    if name in ("region_mass_diff", "final_token_profile", "final_token_value_profile", "knockout"):
        assert signed, f"{name}: the synthetic differences should be drawn"
    for group in (signed, unsigned):
        assert len({(m.norm.vmin, m.norm.vmax) for m in group}) <= 1, f"{name}: panels scaled one by one"
    for m in signed:
        assert m.norm.vmin == pytest.approx(-m.norm.vmax), f"{name}: signed map not centred on 0"
        assert m.norm.vmax >= np.nanmax(np.abs(m.get_array())) - 1e-12, f"{name}: values beyond the scale"
        ends, middle = (_lightness(m.cmap(0.0)), _lightness(m.cmap(1.0))), _lightness(m.cmap(0.5))
        assert middle > max(ends) + 0.3, f"{name}: {m.cmap.name} is not a diverging map (light at 0)"


def test_no_two_texts_overlap_or_fall_off_the_figure(drawn):
    name, fig = drawn
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.texts if t.get_text()]  # the suptitle
    for ax in fig.axes:
        if not ax.get_visible() or not ax.axison:
            continue
        texts += [t for t in (ax.title, ax.xaxis.label, ax.yaxis.label) if t.get_text()]
        texts += _labels(ax.xaxis) + _labels(ax.yaxis)
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += [t for t in (legend.get_title(), *legend.get_texts()) if t.get_text()]
    boxes = np.array([t.get_window_extent(renderer).extents for t in texts])  # x0, y0, x1, y1 in pixels
    outside = [t.get_text() for t, (x0, y0, x1, y1) in zip(texts, boxes)
               if x0 < 0 or y0 < 0 or x1 > fig.bbox.width or y1 > fig.bbox.height]
    assert not outside, f"{name}: texts cut off at the figure's edge {outside[:5]}"
    tol = 0.5
    lo, hi = boxes[:, :2], boxes[:, 2:]
    overlap = ((lo[:, None, :] < hi[None, :, :] - tol) & (lo[None, :, :] < hi[:, None, :] - tol)).all(axis=2)
    np.fill_diagonal(overlap, False)
    pairs = [(texts[i].get_text(), texts[j].get_text()) for i, j in zip(*np.nonzero(np.triu(overlap)))]
    assert not pairs, f"{name}: overlapping texts {pairs[:5]}"


@pytest.mark.parametrize("name", ["final_token_profile", "final_token_value_profile"])
def test_layer_ticks_are_horizontal_and_few(name):
    for mesh in _heatmaps(_drawn(name)):
        labels = _labels(mesh.axes.yaxis)
        assert 3 <= len(labels) <= 15, f"{len(labels)} layer labels for 30 layers"
        assert all(t.get_rotation() == 0 for t in labels), "layer labels rotated: they run together"


def test_rollout_shows_the_regions_beside_the_sink():
    """The sink holds ~all the weight; every other region's bar must still be visible (>= 3% of
    the axes' height), here with weights from 1e-3 down to 1e-7."""
    (ax,) = [ax for ax in _drawn("rollout").axes if ax.patches]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == len(CONDITIONS) * len(REGIONS)
    for bar in bars:
        box = bar.get_window_extent()
        top, bottom = min(box.y1, ax.bbox.y1), max(box.y0, ax.bbox.y0)
        assert top - bottom >= 0.03 * ax.bbox.height, f"a bar of height {bar.get_height():.1e} cannot be seen"


def test_every_data_axes_names_its_axes(drawn):
    """Each panel says what its x and y show: an axis label or named ticks (on the panel or on
    a panel whose y axis it shares)."""
    name, fig = drawn
    bar_axes = {cb.ax for cb in _colorbars(fig)}
    for ax in fig.axes:
        if ax in bar_axes or not ax.get_visible() or not ax.axison:
            continue
        assert ax.get_xlabel(), f"{name}: panel '{ax.get_title()}' has no x label"
        named = [a for a in ax.get_shared_y_axes().get_siblings(ax)
                 if a.get_ylabel() or any(not _is_number(t.get_text()) for t in _labels(a.yaxis))]
        assert named, f"{name}: panel '{ax.get_title()}' does not say what its y axis shows"


def test_a_forest_plot_keeps_ordinary_intervals_readable_beside_a_far_one():
    from at_probe.runs.plotting import axis_limit, xsum_roles

    bounds = np.array([[-0.05, 0.01], [-0.02, 0.03], [1.30, 1.58], [-0.10, -0.05]])
    assert axis_limit(bounds) == pytest.approx(1.15 * 0.10)  # the far row off the axis
    assert axis_limit(bounds[[0, 1, 3]]) is None  # none far off: the plot's own limits
    assert axis_limit(np.array([[np.nan, np.nan], [0.1, 0.2]])) is None
    rows = [{"comparison": c, "metric": "summary_nll", "bucket": "800", "mean": (lo + hi) / 2, "lo": lo, "hi": hi}
            for c, (lo, hi) in zip("abcd", bounds)]
    fig = xsum_roles(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert ax.get_xlim() == pytest.approx((-0.115, 0.115))
    assert [t.get_text() for t in ax.texts] == ["+1.44 [+1.30, +1.58]"], "the far row's values in words"
    plt.close(fig)


def test_a_forest_plot_of_one_bucket_does_not_repeat_it_as_pooled():
    from at_probe.runs.plotting import xsum_roles

    rows = [{"comparison": c, "metric": "summary_nll", "bucket": b, "mean": m, "lo": m - 0.01, "hi": m + 0.01}
            for c, m in (("a", 0.1), ("b", 0.2)) for b in ("all", "800")]
    fig = xsum_roles(pd.DataFrame(rows))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bucket 800"]
    plt.close(fig)
    two = [*rows, *({**r, "bucket": "1900"} for r in rows if r["bucket"] == "800")]
    fig = xsum_roles(pd.DataFrame(two))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["pooled", "bucket 800", "bucket 1900"]
    plt.close(fig)


def test_a_forest_plot_with_an_undefined_interval_draws_the_others():
    from at_probe.runs.plotting import xsum_roles

    rows = [{"comparison": c, "metric": "summary_nll", "bucket": "800", "mean": m, "lo": m - 0.01, "hi": m + 0.01}
            for c, m in (("a", 0.1), ("b", float("nan")))]
    fig = xsum_roles(pd.DataFrame(rows))
    assert not fig.axes[0].texts, "nothing is off the axis"
    plt.close(fig)
