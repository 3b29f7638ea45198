"""Seaborn figures from tidy data: DataFrame in, Figure out.

Every figure is saved next to the CSV of exactly the data it plots (``save_figure``), so
``analyses/figures.py`` can redraw it from committed data without recomputing. ``PLOTS`` maps
a figure name to its plotting function; a figure's CSV is ``<name>.csv``.

Every figure reads on its own: heatmaps name their regions and layers on the axes and carry a
colour bar with the unit; panels showing one quantity share one colour scale; signed
differences use a diverging map centred on 0 with one symmetric range (``_norm``); layouts are
constrained so titles, labels and colour bars do not overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.collections import QuadMesh
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

DIVERGING = "RdBu_r"  # signed differences: blue below 0, white at 0, red above
SEQUENTIAL = "viridis"
UNITS = {
    "sink_mass": "attention on token 0",
    "entropy": "row entropy (nats)",
    "distance": "query-key distance (tokens)",
    "final_token_profile": "attention mass",
    "final_token_value_profile": "value-weighted norm",
    "attribution_nll": "est. NLL change (nats/token)",
    "kl": "KL vs unablated output (nats)",
    "nll_delta": "change of NLL (nats/token)",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _panels(groups: Sequence[int], width: float, height: float, max_cols: int = 3,
            extra_height: float = 0.0) -> tuple[Figure, list[list[Axes]]]:
    """Figure with one group of panels per entry of ``groups`` (its panel count), each group in
    a subfigure of its own (so a group's colour bar does not shift another group's columns),
    wrapped into rows of ``max_cols``; unused axes hidden. ``width``, ``height``: inches per
    panel; ``extra_height``: inches for what is not in a row (a colour bar below the panels).
    Constrained layout keeps titles, tick labels and colour bars apart."""
    plt, _ = _plt()
    cols = min(max(groups), max_cols)
    rows = [-(-n // cols) for n in groups]
    fig = plt.figure(figsize=(width * cols, height * sum(rows) + extra_height), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.1)  # at the default 0.04 in, a label below 5 rows fell off the figure
    out = []
    for sub, n, r in zip(np.atleast_1d(fig.subfigures(len(groups), 1, height_ratios=rows)), groups, rows):
        flat = list(sub.subplots(r, cols, squeeze=False).flat)
        for ax in flat[n:]:
            ax.axis("off")
        out.append(flat[:n])
    return fig, out


def region_sort_key(label: str) -> float:
    """Token order of a region label (``sink``, ``template``, ``doc NN`` or ``a-b``, ``instruction``)."""
    fixed = {"sink": -2.0, "template": -1.0, "instruction": float("inf")}
    if label in fixed:
        return fixed[label]
    return float(label.removeprefix("doc ").split("-")[0])


def _region_order(df: pd.DataFrame, column: str = "region") -> list[str]:
    """Region labels in token order (``sink`` first), whatever order the CSV holds."""
    return sorted(dict.fromkeys(df[column]), key=lambda s: region_sort_key(str(s)))


def _is_difference(condition: str) -> bool:
    """Whether a condition label names a difference, e.g. ``paper - baseline`` (``analyses/flow.py``)."""
    return " - " in str(condition)


def _norm(values: Sequence[float], signed: bool) -> Normalize:
    """One colour scale for every panel drawn from ``values``: ``[-m, m]`` centred on 0 when
    ``signed``, else ``[0, m]``, with ``m`` the largest ``|value|`` (1 if all are 0)."""
    from matplotlib.colors import CenteredNorm, Normalize

    m = float(np.nanmax(np.abs(np.asarray(values, dtype=float)), initial=0.0)) or 1.0
    return CenteredNorm(0.0, m) if signed else Normalize(0.0, m)


def _heatmap(ax: Axes, grid: pd.DataFrame, norm: Normalize, cmap: str,
             fontsize: float | None = None) -> QuadMesh:
    """Draw ``grid`` (rows x columns, first row at the top) on ``ax`` without a colour bar of its
    own: every column named, rows named at a step of 1, 2 or 5 x 10^k (at most 12 labels, so 30
    layers read 0, 5, ..., 25), all labels horizontal except the columns'. Returns the mesh for a
    colour bar shared by several panels (``figure.colorbar(mesh, ax=axes)``)."""
    values = grid.to_numpy(dtype=float)
    mesh = ax.pcolormesh(values, norm=norm, cmap=cmap)
    step = next(s for k in count() for s in (10**k, 2 * 10**k, 5 * 10**k) if len(grid) <= 12 * s)
    rows = np.arange(0, len(grid), step)
    ax.set_xticks(np.arange(values.shape[1]) + 0.5, [str(c) for c in grid.columns], rotation=90,
                  fontsize=fontsize)
    ax.set_yticks(rows + 0.5, [str(grid.index[i]) for i in rows], fontsize=fontsize)
    ax.invert_yaxis()
    ax.grid(False)
    return mesh


def _figure_legend(fig: Figure, ax: Axes, title: str | None = None) -> None:
    """Move ``ax``'s legend below the figure, once for all panels (clear of the suptitle)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    fig.legend(handles, labels, title=title, loc="outside lower center", ncols=min(len(labels), 4),
               fontsize=8)


def final_token_profile(df: pd.DataFrame) -> Figure:
    """Layers x regions heatmaps of the last token's attention (head mean), one per condition.

    ``df``: columns ``condition, layer, region, value`` (difference panels appear as their own
    condition, e.g. ``paper - baseline``), and optionally ``measure``: for
    ``final_token_value_profile`` the value-weighted flow (norm units) is drawn. The conditions
    share one colour scale and bar; the differences, on a row of their own, share one symmetric
    diverging scale centred on 0.
    """
    _plt()
    weighted = "measure" in df and (df["measure"] == "final_token_value_profile").any()
    unit = UNITS["final_token_value_profile" if weighted else "final_token_profile"]
    conditions = list(dict.fromkeys(df["condition"]))
    groups = [g for g in ([c for c in conditions if not _is_difference(c)],
                          [c for c in conditions if _is_difference(c)]) if g]
    fig, axes = _panels([len(g) for g in groups], 3.6, 3.6, max_cols=4)
    order = _region_order(df)
    for conds, group_axes in zip(groups, axes):
        signed = _is_difference(conds[0])
        part = df[df.condition.isin(conds)]
        norm = _norm(part["value"], signed)
        for ax, cond in zip(group_axes, conds):
            grid = part[part.condition == cond].pivot_table(index="layer", columns="region",
                                                            values="value")[order]
            mesh = _heatmap(ax, grid, norm, DIVERGING if signed else SEQUENTIAL)
            ax.set(title=cond, xlabel="key region", ylabel="layer")
        mesh.axes.figure.colorbar(mesh, ax=group_axes, label=f"change of {unit}" if signed else unit)
    fig.suptitle(f"Final prompt token: {unit} per context region (mean over heads)")
    return fig


def region_mass(df: pd.DataFrame) -> Figure:
    """From-region x to-region mass (head mean), one panel per layer, all on one colour scale.

    ``df``: ``layer, from_region, region, value`` and optionally ``condition``; a difference
    (e.g. ``paper - baseline``) is drawn on a diverging scale centred on 0, symmetric about it.
    """
    _plt()
    layers = sorted(df["layer"].unique())
    condition = str(df["condition"].iloc[0]) if "condition" in df else ""
    signed = _is_difference(condition)
    fig, (axes,) = _panels([len(layers)], 2.5, 2.5, max_cols=6, extra_height=1.5)
    order = _region_order(df)
    norm = _norm(df["value"], signed)
    for ax, layer in zip(axes, layers):
        grid = df[df.layer == layer].pivot_table(index="from_region", columns="region", values="value")
        mesh = _heatmap(ax, grid.loc[order, order], norm, DIVERGING if signed else SEQUENTIAL, fontsize=6)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("to region", fontsize=7)
        ax.set_ylabel("from region", fontsize=7)
    unit = "attention mass per query row"
    mesh.axes.figure.colorbar(mesh, ax=axes, location="bottom", shrink=0.5, aspect=40,
                              label=f"change of {unit}" if signed else unit)
    what = "Change of region-to-region" if signed else "Region-to-region"
    fig.suptitle(f"{what} attention mass: {condition}\n(mean over heads and over the from-region's rows)")
    return fig


def layer_measures(df: pd.DataFrame) -> Figure:
    """Per-layer sink mass, entropy and distance (head mean), ``hue=condition``."""
    plt, sns = _plt()
    from matplotlib.ticker import MaxNLocator

    measures = list(dict.fromkeys(df["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.0 * len(measures) + 1.2, 3.2), squeeze=False,
                             layout="constrained")
    for i, (ax, m) in enumerate(zip(axes[0], measures)):
        sns.lineplot(data=df[df.measure == m], x="layer", y="value", hue="condition", marker="o", ax=ax,
                     errorbar=None, legend=i == 0)
        ax.set(title=m, xlabel="layer", ylabel=UNITS.get(m, m))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _figure_legend(fig, axes[0][0], "condition")
    return fig


def rollout(df: pd.DataFrame) -> Figure:
    """Rollout from the last token to each region at the last layer, ``hue=condition``, on a
    log scale: the sink holds nearly all the weight, the other regions 10^-3 and less."""
    plt, sns = _plt()
    last = df[(df.layer == df.layer.max()) & (df.value > 0)]
    fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
    sns.barplot(data=last, x="region", y="value", hue="condition", order=_region_order(last), ax=ax)
    ax.set_yscale("log")
    ax.set_ylim(10 ** np.floor(np.log10(last["value"].min()) - 0.5), 2.0)  # the least bar stays visible
    ax.set_ylabel("rollout weight (log scale)")
    ax.set_xlabel("context region")
    ax.set_title("Attention rollout from the final token (after the last layer)")
    ax.tick_params(axis="x", rotation=60)
    _figure_legend(fig, ax, "condition")
    return fig


def knockout(df: pd.DataFrame) -> Figure:
    """Knockout effect heatmaps (bands x regions), one panel per condition, one row group per
    metric: KL on one sequential scale, the NLL change on one symmetric scale centred on 0."""
    _plt()
    metrics = list(dict.fromkeys(df["metric"]))
    groups = [list(dict.fromkeys(df[df.metric == m]["condition"])) for m in metrics]
    fig, axes = _panels([len(g) for g in groups], 4.2, 3.0, max_cols=3)
    order = _region_order(df)
    for metric, conds, group_axes in zip(metrics, groups, axes):
        part = df[df.metric == metric]
        signed = metric != "kl"
        norm = _norm(part["value"], signed)
        for ax, cond in zip(group_axes, conds):
            grid = part[part.condition == cond].pivot_table(index="band", columns="region", values="value",
                                                            sort=False)[order]
            mesh = _heatmap(ax, grid, norm, DIVERGING if signed else SEQUENTIAL)
            ax.set(title=f"{cond}: {metric}", xlabel="knocked-out region", ylabel="layers")
        mesh.axes.figure.colorbar(mesh, ax=group_axes, label=UNITS.get(metric, metric))
    fig.suptitle("Attention knockout: effect at the end of the prompt")
    return fig


def setting_gains(df: pd.DataFrame) -> Figure:
    """Release re-analysis: per-setting gains per bucket, then oracle vs held-out vs control.

    ``df``: columns ``panel`` (``setting`` / ``headline``), ``bucket, label, mean_gain, lo, hi``.
    """
    plt, sns = _plt()
    gains, head = df[df.panel == "setting"], df[df.panel == "headline"].reset_index(drop=True)
    buckets = list(dict.fromkeys(df["bucket"].astype(str)))
    fig, axes = plt.subplots(1, len(buckets) + 1, figsize=(4.2 * (len(buckets) + 1), 6.5),
                             gridspec_kw={"width_ratios": [1] * len(buckets) + [1.4]}, layout="constrained")
    for ax, bucket in zip(axes, buckets):
        part = gains[gains["bucket"].astype(str) == bucket].sort_values("mean_gain")
        y = range(len(part))
        ax.errorbar(part["mean_gain"], y, xerr=[part["mean_gain"] - part["lo"], part["hi"] - part["mean_gain"]],
                    fmt="o", ms=3, capsize=2)
        ax.set_yticks(list(y), part["label"], fontsize=6)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{bucket}-token bucket: each setting")
        ax.set_xlabel("GPT-4 score gain vs baseline (95% CI)")
    ax = axes[-1]
    labels = list(dict.fromkeys(head["label"]))
    palette = sns.color_palette(n_colors=len(labels))
    for k, label in enumerate(labels):
        part = head[head.label == label]
        y = [buckets.index(str(b)) + (k - (len(labels) - 1) / 2) * 0.22 for b in part["bucket"]]
        ax.errorbar(part["mean_gain"], y, xerr=[part["mean_gain"] - part["lo"], part["hi"] - part["mean_gain"]],
                    fmt="o", capsize=3, color=palette[k], label=label)
    ax.set_yticks(range(len(buckets)), [f"{b} tokens" for b in buckets])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("mean gain over baseline (points, 95% interval)")
    ax.set_title("Oracle vs held-out selection")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    return fig


def _forest_axes(ax: Axes, title: str) -> None:
    """Common dressing of a paired-difference panel: the zero line, title, x label, few x ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.axvline(0, color="grey", lw=0.8)
    ax.set_title(title)
    ax.set_xlabel("paired difference (95% CI)")
    ax.xaxis.set_major_locator(MaxNLocator(4))


def xsum_paired(df: pd.DataFrame) -> Figure:
    """XSum run: paired differences (95% CI) per setting, vs baseline and vs placebo."""
    plt, sns = _plt()
    lower = {"summary_nll", "repetition_4gram"}
    metrics = [m for m in ("rougeL", "summary_nll", "repetition_4gram", "novel_bigrams") if m in set(df.metric)]
    n_rows = len(df[df.metric == metrics[0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics) + 4.0, 0.6 * n_rows + 2.5),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, m in zip(axes[0], metrics):
        part = df[df.metric == m].reset_index(drop=True)
        labels = [f"{r.setting} ({r.comparison})" for r in part.itertuples()]
        ax.errorbar(part["mean"], range(len(part)), xerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]],
                    fmt="o", capsize=3)
        ax.set_yticks(range(len(part)), labels, fontsize=7)
        _forest_axes(ax, m + (" (lower is better)" if m in lower else ""))
    return fig


def xsum_roles(df: pd.DataFrame) -> Figure:
    """XSum experiment: paired differences (95% CI) per comparison, pooled and per bucket, for
    the primary metric and two secondary ones; ``df``: comparison, metric, bucket, mean, lo, hi."""
    return _forest_by_bucket(df, ("semantic_similarity", "rougeL", "summary_nll"), "semantic_similarity",
                             lower_is_better={"summary_nll"}, bucket_label="bucket {}")


def longctx_paired(df: pd.DataFrame) -> Figure:
    """Long-context bench: paired differences (95% CI) per comparison, pooled over lengths and
    per length; exact match (primary) and the answer's log-probability. ``df``: comparison,
    metric, bucket (a length or ``all``), mean, lo, hi."""
    return _forest_by_bucket(df, ("exact", "logprob"), "exact", lower_is_better=set(), bucket_label="{} tokens")


def axis_limit(bounds: np.ndarray, *, factor: float = 8.0) -> float | None:
    """A symmetric x-limit that keeps a forest plot's ordinary intervals readable when a few lie
    far off: with ``bounds`` ``[rows, 2]`` (each interval's lo, hi), the rows whose largest
    ``|bound|`` exceeds ``factor`` times the median of those values are off the axis,
    and the limit is 1.15 times the largest of the others; None when no row is that far off (or
    all are). Rows off the axis are drawn as an arrow at the edge with their values in words."""
    reach = np.fmax(np.abs(bounds[:, 0]), np.abs(bounds[:, 1])) if len(bounds) else np.array([])
    reach = reach[np.isfinite(reach)]
    if len(reach) < 2:
        return None
    typical = float(np.median(reach))
    kept = reach[reach <= factor * typical]
    if typical == 0 or len(kept) in (0, len(reach)):
        return None
    return 1.15 * float(kept.max())


def _forest_by_bucket(df: pd.DataFrame, order: Sequence[str], primary: str, *, lower_is_better: set[str],
                      bucket_label: str) -> Figure:
    """One panel per metric of ``order`` present in ``df``; per comparison a row of intervals,
    one per bucket (``all``: pooled, in black, unless it only repeats the one bucket)."""
    plt, sns = _plt()
    df = df[df.bucket.astype(str) != "all"] if df.bucket.astype(str).nunique() == 2 else df
    metrics = [m for m in order if m in set(df.metric)]
    comparisons = list(dict.fromkeys(df.comparison))
    buckets = list(dict.fromkeys(df.bucket.astype(str)))
    colors = dict(zip(buckets, ["k", *sns.color_palette()]))
    fig, axes = plt.subplots(1, len(metrics), squeeze=False, sharey=True, layout="constrained",
                             figsize=(4.0 * len(metrics) + 2.4, 0.55 * len(comparisons) + 2.2))
    for ax, m in zip(axes[0], metrics):
        rows = df[df.metric == m]
        limit = axis_limit(rows[["lo", "hi"]].to_numpy(dtype=float))
        for j, bucket in enumerate(buckets):
            part = rows[rows.bucket.astype(str) == bucket].set_index("comparison")
            part = part.reindex([c for c in comparisons if c in part.index])
            y = np.array([comparisons.index(c) for c in part.index]) + (j - (len(buckets) - 1) / 2) * 0.22
            inside = ~(part[["lo", "hi"]].abs().max(axis=1).to_numpy() > (limit or np.inf))  # NaN: inside
            ax.errorbar(part["mean"][inside], y[inside], fmt="o", ms=4, capsize=2, color=colors[bucket],
                        xerr=[(part["mean"] - part["lo"])[inside], (part["hi"] - part["mean"])[inside]],
                        label="pooled" if bucket == "all" else bucket_label.format(bucket))
            for row, yy in zip(part[~inside].itertuples(), y[~inside]):  # off the axis: its value in words
                edge = np.sign(row.mean) * limit
                ax.annotate(f"{row.mean:+.2f} [{row.lo:+.2f}, {row.hi:+.2f}]", (edge, yy), fontsize=7,
                            xytext=(-8 if edge > 0 else 8, 0), textcoords="offset points",
                            ha="right" if edge > 0 else "left", va="center", color=colors[bucket])
                ax.plot(edge, yy, marker=">" if edge > 0 else "<", ms=5, color=colors[bucket])
        if limit is not None:
            ax.set_xlim(-limit, limit)
        ax.set_yticks(range(len(comparisons)), comparisons, fontsize=8)
        _forest_axes(ax, m + (" (primary)" if m == primary else "")
                     + (" (lower is better)" if m in lower_is_better else ""))
    axes[0][0].invert_yaxis()  # shared: once for all panels
    _figure_legend(fig, axes[0][-1])
    return fig


def longctx_accuracy(df: pd.DataFrame, value: str = "accuracy", label: str = "exact-match rate") -> Figure:
    """Long-context bench: a 0-1 score (exact match; ``reply_match`` for generated replies) by
    needle depth (rows) and prompt length (columns), one panel per condition, a row of panels
    per task, one 0-1 colour scale for all. ``df``: task, condition, length, depth, ``value``."""
    _plt()
    tasks, conditions = list(dict.fromkeys(df["task"])), list(dict.fromkeys(df["condition"]))
    fig, axes = _panels([len(conditions)] * len(tasks), 2.4, 2.4, max_cols=len(conditions))
    from matplotlib.colors import Normalize

    norm = Normalize(0.0, 1.0)  # one scale for every panel; a colour bar per task's row
    for task, task_axes in zip(tasks, axes):
        mesh = None
        for ax, cond in zip(task_axes, conditions):
            part = df[(df.task == task) & (df.condition == cond)]
            if part.empty:
                ax.set_visible(False)
                continue
            grid = part.pivot_table(index="depth", columns="length", values=value)
            mesh = _heatmap(ax, grid, norm, SEQUENTIAL, fontsize=7)
            ax.set_title(f"{task}: {cond}", fontsize=8)
            ax.set(xlabel="prompt tokens", ylabel="needle depth")
        if mesh is not None:
            mesh.axes.figure.colorbar(mesh, ax=[a for a in task_axes if a.get_visible()], label=label)
    fig.suptitle(f"{label[0].upper()}{label[1:]} by needle depth and prompt length")
    return fig


def longctx_needle(df: pd.DataFrame) -> Figure:
    """Long-context bench per layer (mean over prompts): a line per condition, a panel per length, a row per
    measure ``df`` holds (needle_mass, needle_flow: the last prompt token on the needle, mean over heads;
    needle_knockout: nats of the answer's log-probability). ``df``: condition, length, layer, measures."""
    plt, sns = _plt()
    lengths = sorted(df["length"].unique())
    measures = [(c, u) for c, u in (("needle_mass", "attention mass"), ("needle_flow", UNITS["final_token_value_profile"]),
                                    ("needle_knockout", "knockout estimate (nats)")) if c in df.columns]
    fig, axes = plt.subplots(len(measures), len(lengths), squeeze=False, sharey="row", layout="constrained",
                             figsize=(3.4 * len(lengths) + 1.0, 3.1 * len(measures)))
    for j, length in enumerate(lengths):
        part = df[df.length == length]
        for i, (column, unit) in enumerate(measures):
            ax = axes[i][j]
            sns.lineplot(part, x="layer", y=column, hue="condition", ax=ax, legend=(i, j) == (0, 0))
            ax.set(title=f"{length} tokens" if i == 0 else "", ylabel=unit if j == 0 else "", xlabel="layer")
    _figure_legend(fig, axes[0][0], title="condition")
    fig.suptitle("Knocking the needle out: estimated change in the answer's log-probability" if len(measures) == 1
                 else "Last prompt token's attention on the needle, per layer")
    return fig


def corpus_differences(df: pd.DataFrame) -> Figure:
    """Paired differences from the baseline per layer with 95% bands, one panel per region (or
    per measure for per-layer measures); ``df``: condition, measure, layer, region, mean, lo, hi."""
    plt, sns = _plt()
    from matplotlib.ticker import MaxNLocator

    by_region = df["region"].fillna("").astype(str).str.len().gt(0).any()
    facet = "region" if by_region else "measure"
    panels = _region_order(df, "region") if by_region else list(dict.fromkeys(df["measure"]))
    conditions = list(dict.fromkeys(df["condition"]))
    # the default palette has 10 colours: more conditions (a flow run of the peers' selection
    # has 18) take tab20's 20
    colors = dict(zip(conditions, sns.color_palette(None if len(conditions) <= 10 else "tab20",
                                                    n_colors=len(conditions))))
    legend_rows = -(-len(colors) // 4)  # _figure_legend's 4 columns, below the panels
    fig, (axes,) = _panels([len(panels)], 3.6, 2.9, max_cols=4, extra_height=0.3 + 0.25 * legend_rows)
    for ax, panel in zip(axes, panels):
        part = df[df[facet] == panel].sort_values("layer")
        for cond, line in part.groupby("condition", sort=False):
            ax.plot(line["layer"], line["mean"], color=colors[cond], lw=1.2, label=cond)
            ax.fill_between(line["layer"], line["lo"], line["hi"], color=colors[cond], alpha=0.25, lw=0)
        ax.axhline(0, color="k", lw=0.6)
        measure = str(part["measure"].iloc[0])
        ax.set(title=str(panel), xlabel="layer")
        ax.set_ylabel(f"\N{GREEK CAPITAL LETTER DELTA} {UNITS.get(measure, measure)}", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _figure_legend(fig, axes[0], "condition")
    n = int(df["n"].max()) if "n" in df else 0
    fig.suptitle(f"{', '.join(dict.fromkeys(df['measure']))}: paired difference from baseline over {n} "
                 "documents (mean, 95% bootstrap band)")
    return fig


def attribution_agreement(df: pd.DataFrame) -> Figure:
    """Attribution-patching estimate against exact knockout, one point per (document, band,
    region) cell, coloured by band; ``df``: doc_id, band, region, exact, estimate."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6), layout="constrained")
    sns.scatterplot(data=df, x="exact", y="estimate", hue="band", style="band", s=22, ax=ax)
    lo, hi = min(df.exact.min(), df.estimate.min()), max(df.exact.max(), df.estimate.max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("exact knockout: change of reference NLL (nats/token)")
    ax.set_ylabel("attribution-patching estimate (nats/token)")
    ax.set_title(f"{df.doc_id.nunique()} documents x {len(df) // max(df.doc_id.nunique(), 1)} cells")
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "attribution_agreement": attribution_agreement,
    "setting_gains": setting_gains,
    "xsum_paired": xsum_paired,
    "xsum_roles": xsum_roles,
    "longctx_paired": longctx_paired,
    "longctx_accuracy": longctx_accuracy,
    "longctx_replies": lambda df: longctx_accuracy(df, "reply_match", "reply match"),
    "longctx_needle": longctx_needle,
    "longctx_knockout": longctx_needle,
    "methods_compared": xsum_roles,
    "final_token_profile": final_token_profile,
    "final_token_value_profile": final_token_profile,
    "region_mass": region_mass,
    "region_mass_diff": region_mass,
    "layer_measures": layer_measures,
    "rollout": rollout,
    "knockout": knockout,
    "corpus_profile_diff": corpus_differences,
    "corpus_value_profile_diff": corpus_differences,
    "corpus_layer_measures_diff": corpus_differences,
    "corpus_attribution_diff": corpus_differences,
}


def save_figure(fig: Figure, directory: str | Path, name: str, data: pd.DataFrame | None = None) -> Path:
    """Write ``<name>.png`` (and ``<name>.csv`` of ``data``) into ``directory``; closes the figure."""
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if data is not None:
        data.to_csv(directory / f"{name}.csv", index=False)
    path = directory / f"{name}.png"
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def redraw(directory: str | Path) -> list[Path]:
    """Redraw every ``<name>.png`` in ``directory`` whose ``<name>.csv`` has a known plot."""
    import pandas as pd

    return [save_figure(PLOTS[csv.stem](pd.read_csv(csv)), directory, csv.stem)
            for csv in sorted(Path(directory).glob("*.csv")) if csv.stem in PLOTS]
