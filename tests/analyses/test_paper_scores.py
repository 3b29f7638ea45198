"""analyses/paper_scores.py on the real release (needs ../shared)."""

from __future__ import annotations

import json

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

paper_scores = load_script("paper_scores")


def test_release_reanalysis_layout_and_numbers(tmp_path):
    data = require_shared(XSUM_DIR)
    out = tmp_path / "scores.json"
    code = paper_scores.main(["--data", str(data), "--json", str(out), "--figures", str(tmp_path / "fig"),
                              "--bootstrap", "300", "--repeats", "100"])
    assert code == 0
    result = json.loads(out.read_text())["buckets"]
    assert set(result) == {"800", "1200", "1600", "1900"}
    for bucket, r in result.items():
        for key in ("baseline_mean_released", "best_of_n_mean_released", "n_records", "n_complete",
                    "n_settings", "settings", "heldout_selected_gain"):
            assert key in r
        assert r["n_records"] == 200 and r["n_complete"] >= 170
        assert r["n_settings"] == (24 if bucket in ("800", "1200") else 28) == len(r["settings"])
        for s in r["settings"].values():
            assert s["ci95"][0] <= s["mean_gain"] <= s["ci95"][1]
        # The released best-of-N is an oracle: far above what held-out selection recovers.
        gap = r["best_of_n_mean_released"] - r["baseline_mean_released"]
        assert gap > 20
        assert r["heldout_selected_gain"]["mean"] < gap / 2
    assert abs(result["800"]["baseline_mean_released"] - 56.68) < 1e-6
    assert (tmp_path / "fig" / "setting_gains.png").stat().st_size > 10000


def test_missing_data_dir_exit_code(tmp_path, capsys):
    assert paper_scores.main(["--data", str(tmp_path)]) == 2
    assert "missing release files" in capsys.readouterr().err


def test_summary_says_why_an_estimate_is_missing_and_marks_few_documents(capsys):
    """Three judged documents: too few for the held-out selection (it says how many it needs,
    never ``nan``), and the other intervals are marked."""
    from at_probe.xsum.judgements import analyse_bucket, best_setting

    records = [{"id": str(i), "document": "d", "summary": "s", "decode_or": "a", "decode_al_x": "b",
                "gpt4_eva": f"'decode_or': 50\n'decode_al_x': {55 + i}", "eval_scores": "[50, 60]"}
               for i in range(3)]
    r = analyse_bucket(records, n_boot=50, repeats=10)
    name, est = best_setting(r)
    r["best_in_sample"] = {"setting": name, "mean_gain": est.mean, "ci95": list(est.ci95)}
    paper_scores.print_summary({"buckets": {"800": r}})
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert "n/a (3 documents; a held-out selection needs >= 4, two halves of 2)" in out
    assert "+6.0 [+5.0, +6.9] (3 documents < 10: unreliable)" in out and "n/a (no documents)" in out
