"""The paper's released GPT-4 judgements: parsing and honest re-analysis.

The release (``../shared/data/xsum-at-release``) stores, per document, every setting's text,
GPT-4's raw reply scoring all of them in one prompt (``gpt4_eva``) and ``eval_scores`` =
``[baseline, max over settings]``. The second column is an oracle: the best of 24-28 settings
picked per document *after* judging. This module re-derives per-setting paired gains with
bootstrap intervals, the gain of a setting selected on held-out documents, and the oracle's
control (the same best-of-N over settings whose text is identical to the baseline, where any
"gain" is judge noise).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from at_probe.runs.stats import Estimate, bootstrap_mean, heldout_selected_gain

BASELINE = "decode_or"
_KEY = re.compile(r"'?\b(decode_[A-Za-z0-9_]+)'?\s*:")
_LEADING = re.compile(r"\s*'?\s*(\d{1,3})(?!\d)")
_LABELLED = re.compile(r"Score\s*:\s*'?(\d{1,3})(?!\d)")


def setting_names(record: dict[str, Any]) -> list[str]:
    """The transition settings of a record (``decode_al_...`` keys), in file order."""
    return [k for k in record if k.startswith("decode_al_")]


def parse_scores(text: str) -> dict[str, float]:
    """Scores (0-100) per setting key from GPT-4's raw reply; the first score of a key wins.

    The replies come in several layouts: ``'decode_or': 80``, ``decode_or: 70 , Reason: ..``,
    ``'decode_or': '45': ..``, or the summary quoted first and then ``Score: 35``. Each key's
    segment runs to the next key; its score is the number right after the colon, else the
    first ``Score: N`` in the segment.
    """
    text = text or ""
    keys = list(_KEY.finditer(text))
    scores: dict[str, float] = {}
    for i, match in enumerate(keys):
        segment = text[match.end() : keys[i + 1].start() if i + 1 < len(keys) else len(text)]
        found = _LEADING.match(segment) or _LABELLED.search(segment)
        key = match.group(1)
        if found and key not in scores and int(found.group(1)) <= 100:
            scores[key] = float(found.group(1))
    return scores


def released_scores(record: dict[str, Any]) -> tuple[float, float] | None:
    """``eval_scores`` as (baseline, best-of-N), or None when malformed."""
    raw = record.get("eval_scores")
    try:
        pair = ast.literal_eval(raw) if isinstance(raw, str) else raw
        return float(pair[0]), float(pair[1])
    except (ValueError, SyntaxError, TypeError, IndexError):
        return None


@dataclass
class BucketTable:
    """Parsed scores of one bucket: ``scores[doc, setting]`` (NaN where missing)."""

    settings: list[str]
    baseline: np.ndarray
    scores: np.ndarray
    identical: np.ndarray  # [doc, setting] text equal to the baseline's
    released: list[tuple[float, float]]

    @property
    def complete(self) -> np.ndarray:
        return ~np.isnan(self.baseline) & ~np.isnan(self.scores).any(axis=1)


def bucket_table(records: list[dict[str, Any]]) -> BucketTable:
    """Score table of a bucket's records (settings are those of the first record)."""
    settings = setting_names(records[0])
    base = np.full(len(records), np.nan)
    scores = np.full((len(records), len(settings)), np.nan)
    identical = np.zeros((len(records), len(settings)), dtype=bool)
    released = []
    for i, rec in enumerate(records):
        parsed = parse_scores(rec.get("gpt4_eva", ""))
        base[i] = parsed.get(BASELINE, np.nan)
        for j, name in enumerate(settings):
            scores[i, j] = parsed.get(name, np.nan)
            identical[i, j] = rec.get(name, "").strip() == rec.get(BASELINE, "").strip()
        pair = released_scores(rec)
        if pair is not None:
            released.append(pair)
    return BucketTable(settings, base, scores, identical, released)


def analyse_bucket(records: list[dict[str, Any]], *, seed: int = 0, n_boot: int = 2000,
                   repeats: int = 1000) -> dict[str, Any]:
    """Every number of the re-analysis for one bucket (JSON-ready: an undefined estimate is null
    with its ``reason``, ``at_probe.runs.stats.Estimate.to_dict``)."""
    table = bucket_table(records)
    gains = table.scores - table.baseline[:, None]
    released = np.array(table.released)
    settings = {}
    for j, name in enumerate(table.settings):
        # a document the judge gave no parseable score for this setting is left out and counted
        est = bootstrap_mean(gains[:, j], missing="drop", n_boot=n_boot, seed=seed + j).to_dict()
        settings[name] = {"mean_gain": est.pop("mean"), **est,  # null and its reason when undefined
                          "identical_to_baseline": float(table.identical[:, j].mean())}
    complete = gains[table.complete]
    scored = ~np.isnan(gains).all(axis=1)
    oracle = np.nanmax(gains[scored], axis=1)
    noise = np.where(table.identical, gains, np.nan)
    has_copy = table.identical.any(axis=1) & ~np.isnan(noise).all(axis=1)
    noise_oracle = np.nanmax(np.where(has_copy[:, None], noise, 0.0), axis=1)[has_copy]
    return {
        "baseline_mean_released": float(released[:, 0].mean()),
        "best_of_n_mean_released": float(released[:, 1].mean()),
        "n_records": len(records),
        "n_complete": int(table.complete.sum()),
        "n_settings": len(table.settings),
        "settings": settings,
        "heldout_selected_gain": heldout_selected_gain(complete, repeats=repeats, seed=seed).to_dict(),
        "oracle_gain": bootstrap_mean(oracle, missing="raise", n_boot=n_boot, seed=seed).to_dict(),
        "oracle_control_identical_text": {
            **bootstrap_mean(noise_oracle, missing="raise", n_boot=n_boot, seed=seed).to_dict(),
            "docs_with_identical_setting": int(has_copy.sum()),
        },
        "judge_agreement_identical_text": float(
            np.nanmean(np.where(table.identical, gains == 0, np.nan))) if table.identical.any() else None,
        "identical_to_baseline_share": float(table.identical.mean()),
    }


def best_setting(result: dict[str, Any]) -> tuple[str, Estimate]:
    """The setting with the highest mean gain in an ``analyse_bucket`` result (in-sample).

    Raises:
        ValueError: a setting without a mean gain (no document scored): a NaN would make ``max``
            depend on the settings' order.
    """
    unscored = [name for name, s in result["settings"].items()
                if s["mean_gain"] is None or not np.isfinite(s["mean_gain"])]
    if unscored:
        raise ValueError(f"settings {unscored} have no finite mean gain (no judged document)")
    name, s = max(result["settings"].items(), key=lambda kv: kv[1]["mean_gain"])
    return name, Estimate.from_dict({**s, "mean": s["mean_gain"]})
