"""analyses/flow.py end to end on the tiny model (its default, SmolLM2, runs in `make flow`)."""

from __future__ import annotations

import json

from tests.analyses.conftest import load_script

flow = load_script("flow")

FIGURES = ("final_token_profile", "region_mass", "region_mass_diff", "layer_measures", "rollout", "knockout")


def test_default_run_writes_numbers_and_figures(tmp_path, capsys):
    out = tmp_path / "flow"
    assert flow.main(["--model", "tiny", "--out", str(out), "--regions", "6", "--knockout", "4", "--rollout"]) == 0
    record = json.loads((out / "flow.json").read_text())
    assert record["prompt_tokens"] >= 600 and record["prompt_style"] == "plain"
    assert record["prompt_parts"]["document"][0] == 1 and record["prompt_parts"]["instruction"][1] == record["prompt_tokens"]
    assert set(record["conditions"]) == {"baseline", "paper", "placebo"}
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 5000
        assert (out / f"{name}.csv").is_file()
    base = record["conditions"]["baseline"]
    profile = base["flow"]["final_token_profile"]  # [layer][head][region]
    assert all(abs(sum(h) - 1) < 1e-4 for layer in profile for h in layer)
    paper = record["conditions"]["paper"]
    assert paper["report"] and all(r["rows_touched"] > 0 for r in paper["report"].values())
    ko = base["knockout"]
    labels = ["sink", *(f"doc {i:02d}" for i in range(1, 7)), "instruction"]
    assert base["flow"]["region_labels"] == labels and ko["region_labels"] == labels
    assert len(ko["kl"]) == 2 and len(ko["kl"][0]) == 8 and ko["base_nll"] > 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "placebo" in printed


def test_bad_path_is_a_one_line_error(tmp_path, capsys):
    assert flow.main(["--text", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flow.py: error:") and "\n" not in err
    assert flow.main(["--xsum", str(tmp_path / "x.json.gz"), "--out", str(tmp_path)]) == 2


def test_long_text_is_truncated_with_notice(tmp_path, capsys, sample_text):
    long = tmp_path / "long.txt"
    long.write_text(sample_text * 8)
    code = flow.main(["--model", "tiny", "--text", str(long), "--out", str(tmp_path / "o"), "--transition", "none",
                      "--knockout", "0", "--regions", "4", "--max-tokens", "700"])
    assert code == 0
    assert "truncated" in capsys.readouterr().out
    record = json.loads((tmp_path / "o" / "flow.json").read_text())
    assert set(record["conditions"]) == {"baseline"} and record["prompt_tokens"] == 700
    assert record["conditions"]["baseline"]["flow"]["rollout"] is None, "rollout is opt-in"
    assert not (tmp_path / "o" / "rollout.png").exists()
