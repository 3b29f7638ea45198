"""Parsing GPT-4's replies and the paired statistics, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from at_probe.xsum.judgements import analyse_bucket, best_setting, parse_scores
from at_probe.runs.stats import bootstrap_mean, heldout_selected_gain


@pytest.mark.parametrize(
    "text, expected",
    [
        ("'decode_or': 90\n'decode_al_1_be_05_lay_2': 70", {"decode_or": 90, "decode_al_1_be_05_lay_2": 70}),
        ("'decode_or': '45': , 'reason': bad", {"decode_or": 45}),
        ("decode_or:  40: , Reason: ok\n\ndecode_al_05_be_01_lay_2: 0: , Reason: no", {"decode_or": 40, "decode_al_05_be_01_lay_2": 0}),
        ("'decode_or':'\nScore: 15 , Reason: a URL", {"decode_or": 15}),
        ("'decode_or': 'Tigers 27-27 Saints, final score 27'\nScore: 35, Reason: x", {"decode_or": 35}),
        ("'decode_or': 65: , Reason: just like 'decode_or' also fine", {"decode_or": 65}),
        ("'decode_or':0\n'decode_al_x': 100", {"decode_or": 0, "decode_al_x": 100}),
        ("nothing here", {}),
    ],
)
def test_parse_scores_formats(text, expected):
    assert parse_scores(text) == expected


def test_bootstrap_mean_interval_contains_mean_and_is_seeded():
    values = np.random.default_rng(0).normal(2.0, 1.0, 200)
    a, b = bootstrap_mean(values, seed=1), bootstrap_mean(values, seed=1)
    assert a == b and a.ci95[0] < a.mean < a.ci95[1] and a.n == 200
    assert a.ci95[0] > 1.5 and a.ci95[1] < 2.5


def test_heldout_selection_is_not_fooled_by_noise():
    """With 30 pure-noise settings the in-sample best looks good; held-out selection does not."""
    gains = np.random.default_rng(0).normal(0.0, 10.0, (200, 30))
    in_sample_best = gains.mean(0).max()
    held = heldout_selected_gain(gains, repeats=300, seed=0)
    assert in_sample_best > 1.0
    assert held.ci95[0] < 0 < held.ci95[1] and abs(held.mean) < 1.0


def test_heldout_selection_is_unbiased_on_pure_noise_over_many_seeds():
    """No document may inform both the choice and the score. Over 100 pure-noise data sets
    (24 settings, 50 documents, sd 1) the estimator's mean is 0 within 3 standard errors;
    resampling before splitting (copies on both sides) gives about +0.15 here."""
    estimates = []
    for seed in range(100):
        gains = np.random.default_rng(1000 + seed).normal(0.0, 1.0, (50, 24))
        estimates.append(heldout_selected_gain(gains, repeats=100, seed=seed).mean)
    estimates = np.array(estimates)
    standard_error = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean()) < 3 * standard_error, (estimates.mean(), standard_error)


def test_heldout_selection_finds_a_real_effect():
    gains = np.random.default_rng(1).normal(0.0, 10.0, (200, 10))
    gains[:, 3] += 6.0
    held = heldout_selected_gain(gains, repeats=300, seed=0)
    assert held.ci95[0] > 2.0


def test_analyse_bucket_on_synthetic_records():
    rng = np.random.default_rng(2)
    records = []
    for i in range(40):
        base = int(rng.integers(0, 90))
        records.append({
            "id": str(i), "document": "d", "summary": "s",
            "decode_al_1_be_05_lay_2": "same" if i % 2 else "other",
            "decode_al_15_be_1_lay_3": "different",
            "decode_or": "same",
            "gpt4_eva": f"'decode_or': {base}\n'decode_al_1_be_05_lay_2': {base + 5}\n'decode_al_15_be_1_lay_3': {base}",
            "eval_scores": f"[{base}, {base + 5}]",
        })
    r = analyse_bucket(records, n_boot=200, repeats=100)
    assert r["n_records"] == r["n_complete"] == 40 and r["n_settings"] == 2
    assert r["settings"]["decode_al_1_be_05_lay_2"]["mean_gain"] == 5
    assert r["settings"]["decode_al_1_be_05_lay_2"]["identical_to_baseline"] == 0.5
    assert r["settings"]["decode_al_15_be_1_lay_3"]["ci95"] == [0, 0]
    assert r["best_of_n_mean_released"] - r["baseline_mean_released"] == 5
    assert r["heldout_selected_gain"]["mean"] == pytest.approx(5)


def test_documents_the_judge_did_not_score_are_counted_not_silently_dropped():
    records = [{"id": str(i), "document": "d", "summary": "s", "decode_or": "a", "decode_al_x": "b",
                "gpt4_eva": f"'decode_or': 50\n'decode_al_x': {60 if i else 'unreadable'}",
                "eval_scores": "[50, 60]"} for i in range(6)]
    r = analyse_bucket(records, n_boot=50, repeats=10)
    assert r["settings"]["decode_al_x"]["n"] == 5 and r["settings"]["decode_al_x"]["n_missing"] == 1
    assert best_setting(r)[1].n_missing == 1
    r["settings"]["decode_al_x"]["mean_gain"] = float("nan")  # a setting no document was judged under
    with pytest.raises(ValueError, match="decode_al_x"):
        best_setting(r)


def test_a_setting_no_document_was_judged_under_is_null_with_its_reason():
    """The re-analysis's JSON (``paper_scores.py --json``) is standard JSON: an undefined gain is
    null with its reason, never NaN."""
    import json

    records = [{"id": str(i), "document": "d", "summary": "s", "decode_or": "a", "decode_al_x": "b",
                "gpt4_eva": "'decode_or': 50\n'decode_al_x': unreadable", "eval_scores": "[50, 60]"}
               for i in range(3)]
    r = analyse_bucket(records, n_boot=50, repeats=10)
    json.dumps(r, allow_nan=False)
    setting = r["settings"]["decode_al_x"]
    assert setting["mean_gain"] is None and setting["reason"] == "no documents (3 without a value)"
    assert r["heldout_selected_gain"]["reason"].startswith("0 documents; a held-out selection needs >= 4")
    with pytest.raises(ValueError, match="decode_al_x"):
        best_setting(r)
