"""Seaborn figures from tidy data: DataFrame in, Figure out.

Every figure is saved next to the CSV of exactly the data it plots (``save_figure``), so
``analyses/figures.py`` can redraw it from committed data without recomputing. ``PLOTS`` maps
a figure name to its plotting function; a figure's CSV is ``<name>.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from at_probe.ops import region_sort_key

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _panels(n: int, width: float, height: float, max_cols: int = 3):
    """Figure with ``n`` panels wrapped into rows of ``max_cols``; unused axes hidden."""
    plt, _ = _plt()
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, list(axes.flat)[:n]


def _region_order(df: pd.DataFrame, column: str = "region") -> list[str]:
    """Region labels in token order (``sink`` first), whatever order the CSV holds."""
    return sorted(dict.fromkeys(df[column]), key=lambda s: region_sort_key(str(s)))


def final_token_profile(df: pd.DataFrame) -> Figure:
    """Layers x regions heatmaps of the last token's attention (head mean), one per condition.

    ``df``: columns ``condition, layer, region, value`` (difference panels appear as their own
    condition, e.g. ``paper - baseline``), and optionally ``measure``: for
    ``final_token_value_profile`` the value-weighted flow (norm units) is drawn.
    """
    plt, sns = _plt()
    weighted = "measure" in df and (df["measure"] == "final_token_value_profile").any()
    unit = "value-weighted norm" if weighted else "attention mass"
    conditions = list(dict.fromkeys(df["condition"]))
    fig, axes = _panels(len(conditions), 5.0, 4.2, max_cols=4)
    order = _region_order(df)
    for ax, cond in zip(axes, conditions):
        grid = df[df.condition == cond].pivot_table(index="layer", columns="region", values="value")[order]
        diff = " - " in cond
        sns.heatmap(grid, ax=ax, cmap="RdBu_r" if diff else "viridis", center=0 if diff else None,
                    cbar_kws={"label": unit})
        ax.set_title(cond)
        ax.set_xlabel("key region")
        ax.set_ylabel("layer")
    fig.suptitle(f"Final prompt token: {unit} per context region (mean over heads)")
    fig.tight_layout()
    return fig


def region_mass(df: pd.DataFrame) -> Figure:
    """From-region x to-region mass (head mean), one panel per layer; ``df``: layer, from_region, region, value."""
    plt, sns = _plt()
    layers = sorted(df["layer"].unique())
    fig, axes = _panels(len(layers), 3.3, 3.0, max_cols=4)
    order = _region_order(df)
    for ax, layer in zip(axes, layers):
        grid = df[df.layer == layer].pivot_table(index="from_region", columns="region", values="value")
        sns.heatmap(grid.loc[order, order], ax=ax, cmap="magma", vmin=0, cbar=False, xticklabels=False,
                    yticklabels=False)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("to region")
        ax.set_ylabel("from region")
    title = df["condition"].iloc[0] if "condition" in df else ""
    fig.suptitle(f"Region-to-region attention mass ({title}; sink first, mean over heads)")
    fig.tight_layout()
    return fig


def layer_measures(df: pd.DataFrame) -> Figure:
    """Per-layer sink mass, entropy and distance (head mean), ``hue=condition``."""
    plt, sns = _plt()
    measures = list(dict.fromkeys(df["measure"]))
    fig, axes = plt.subplots(1, len(measures), figsize=(4.0 * len(measures), 3.2), squeeze=False)
    units = {"sink_mass": "attention on token 0", "entropy": "row entropy (nats)",
             "distance": "mean query-key distance (tokens)"}
    for ax, m in zip(axes[0], measures):
        sns.lineplot(data=df[df.measure == m], x="layer", y="value", hue="condition", marker="o", ax=ax,
                     errorbar=None)
        ax.set_title(m)
        ax.set_ylabel(units.get(m, m))
    fig.tight_layout()
    return fig


def rollout(df: pd.DataFrame) -> Figure:
    """Rollout from the last token to each region at the last layer, ``hue=condition``."""
    plt, sns = _plt()
    last = df[df.layer == df.layer.max()]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    sns.barplot(data=last, x="region", y="value", hue="condition", order=_region_order(last), ax=ax)
    ax.set_ylabel("rollout weight")
    ax.set_xlabel("context region")
    ax.set_title("Attention rollout from the final token (after the last layer)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    return fig


def knockout(df: pd.DataFrame) -> Figure:
    """Knockout effect heatmaps (bands x regions), one panel per condition and metric."""
    plt, sns = _plt()
    panels = list(dict.fromkeys(zip(df["condition"], df["metric"])))
    fig, axes = _panels(len(panels), 5.0, 3.8, max_cols=2 if len(panels) <= 4 else 4)
    order = _region_order(df)
    for ax, (cond, metric) in zip(axes, panels):
        part = df[(df.condition == cond) & (df.metric == metric)]
        grid = part.pivot_table(index="band", columns="region", values="value", sort=False)[order]
        sns.heatmap(grid, ax=ax, cmap="rocket_r" if metric == "kl" else "RdBu_r",
                    center=None if metric == "kl" else 0,
                    cbar_kws={"label": "KL (nats)" if metric == "kl" else "delta NLL (nats/token)"})
        ax.set_title(f"{cond}: {metric}")
        ax.set_xlabel("knocked-out region")
        ax.set_ylabel("layers")
    fig.suptitle("Attention knockout: effect at the end of the prompt")
    fig.tight_layout()
    return fig


def setting_gains(df: pd.DataFrame) -> Figure:
    """Release re-analysis: per-setting gains per bucket, then oracle vs held-out vs control.

    ``df``: columns ``panel`` (``setting`` / ``headline``), ``bucket, label, mean_gain, lo, hi``.
    """
    plt, sns = _plt()
    gains, head = df[df.panel == "setting"], df[df.panel == "headline"].reset_index(drop=True)
    buckets = list(dict.fromkeys(df["bucket"].astype(str)))
    fig, axes = plt.subplots(1, len(buckets) + 1, figsize=(4.2 * (len(buckets) + 1), 6.5),
                             gridspec_kw={"width_ratios": [1] * len(buckets) + [1.4]})
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
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def xsum_paired(df: pd.DataFrame) -> Figure:
    """XSum run: paired differences (95% CI) per setting, vs baseline and vs placebo."""
    plt, sns = _plt()
    lower = {"summary_nll", "repetition_4gram"}
    metrics = [m for m in ("rougeL", "summary_nll", "repetition_4gram", "novel_bigrams") if m in set(df.metric)]
    n_rows = len(df[df.metric == metrics[0]])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.6 * n_rows + 2.5), squeeze=False)
    for i, (ax, m) in enumerate(zip(axes[0], metrics)):
        part = df[df.metric == m].reset_index(drop=True)
        labels = [f"{r.setting} ({r.comparison})" for r in part.itertuples()]
        ax.errorbar(part["mean"], range(len(part)), xerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]],
                    fmt="o", capsize=3)
        ax.set_yticks(range(len(part)), labels if i == 0 else [""] * len(part), fontsize=7)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(m + (" (lower is better)" if m in lower else ""))
        ax.set_xlabel("paired difference (95% CI)")
    fig.tight_layout()
    return fig


def xsum_roles(df: pd.DataFrame) -> Figure:
    """XSum experiment: paired differences (95% CI) per comparison, pooled and per bucket, for
    the primary metric and two secondary ones; ``df``: comparison, metric, bucket, mean, lo, hi."""
    import numpy as np

    plt, sns = _plt()
    metrics = [m for m in ("semantic_similarity", "rougeL", "summary_nll") if m in set(df.metric)]
    comparisons = list(dict.fromkeys(df.comparison))
    buckets = list(dict.fromkeys(df.bucket.astype(str)))
    colors = dict(zip(buckets, ["k", *sns.color_palette()]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 0.55 * len(comparisons) + 2.2),
                             squeeze=False)
    for i, (ax, m) in enumerate(zip(axes[0], metrics)):
        for j, bucket in enumerate(buckets):
            part = df[(df.metric == m) & (df.bucket.astype(str) == bucket)].set_index("comparison").loc[comparisons]
            y = np.arange(len(comparisons)) + (j - (len(buckets) - 1) / 2) * 0.22
            ax.errorbar(part["mean"], y, xerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]], fmt="o",
                        ms=4, capsize=2, color=colors[bucket], label="pooled" if bucket == "all" else f"bucket {bucket}")
        ax.set_yticks(range(len(comparisons)), comparisons if i == 0 else [""] * len(comparisons), fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(m + (" (primary)" if m == "semantic_similarity" else "")
                     + (" (lower is better)" if m == "summary_nll" else ""))
        ax.set_xlabel("paired difference (95% CI)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def corpus_differences(df: pd.DataFrame) -> Figure:
    """Paired differences from the baseline per layer with 95% bands, one panel per region (or
    per measure for per-layer measures); ``df``: condition, measure, layer, region, mean, lo, hi."""
    plt, sns = _plt()
    by_region = df["region"].fillna("").astype(str).str.len().gt(0).any()
    facet = "region" if by_region else "measure"
    panels = _region_order(df, "region") if by_region else list(dict.fromkeys(df["measure"]))
    fig, axes = _panels(len(panels), 3.6, 2.6, max_cols=4)
    colors = dict(zip(dict.fromkeys(df["condition"]), sns.color_palette()))
    for ax, panel in zip(axes, panels):
        part = df[df[facet] == panel].sort_values("layer")
        for cond, line in part.groupby("condition", sort=False):
            ax.plot(line["layer"], line["mean"], color=colors[cond], lw=1.2, label=cond)
            ax.fill_between(line["layer"], line["lo"], line["hi"], color=colors[cond], alpha=0.25, lw=0)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(str(panel))
        ax.set_xlabel("layer")
    axes[0].legend(fontsize=7)
    n = int(df["n"].max()) if "n" in df else 0
    fig.suptitle(f"{', '.join(dict.fromkeys(df['measure']))}: paired difference from baseline over {n} "
                 "documents (mean, 95% bootstrap band)")
    fig.tight_layout()
    return fig


def attribution_agreement(df: pd.DataFrame) -> Figure:
    """Attribution-patching estimate against exact knockout, one point per (document, band,
    region) cell, coloured by band; ``df``: doc_id, band, region, exact, estimate."""
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    sns.scatterplot(data=df, x="exact", y="estimate", hue="band", style="band", s=22, ax=ax)
    lo, hi = min(df.exact.min(), df.estimate.min()), max(df.exact.max(), df.estimate.max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="k", lw=0.5)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("exact knockout: change of reference NLL (nats/token)")
    ax.set_ylabel("attribution-patching estimate")
    ax.set_title(f"{df.doc_id.nunique()} documents x {len(df) // max(df.doc_id.nunique(), 1)} cells")
    fig.tight_layout()
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure]] = {
    "attribution_agreement": attribution_agreement,
    "setting_gains": setting_gains,
    "xsum_paired": xsum_paired,
    "xsum_roles": xsum_roles,
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

    written = []
    for csv in sorted(Path(directory).glob("*.csv")):
        plot = PLOTS.get(csv.stem)
        if plot is not None:
            written.append(save_figure(plot(pd.read_csv(csv)), directory, csv.stem))
    return written
