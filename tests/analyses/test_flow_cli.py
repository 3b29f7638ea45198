"""analyses/flow.py end to end on the tiny model (its default, SmolLM2, runs in `make flow`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from at_probe.flow import corpus
from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

flow = load_script("flow")

FIGURES = ("final_token_profile", "final_token_value_profile", "region_mass", "region_mass_diff",
           "layer_measures", "rollout", "knockout")


def test_default_run_writes_numbers_and_figures(tmp_path, capsys):
    out = tmp_path / "flow"
    assert flow.main(["--model", "tiny", "--out", str(out), "--regions", "6", "--knockout", "4", "--rollout",
                      "--attribution"]) == 0
    record = json.loads((out / "flow.json").read_text())
    assert record["prompt_tokens"] >= 600 and record["prompt_style"] == "plain"
    parts = record["prompt_parts"]
    assert parts["document"][0] == 1 and parts["instruction"][1] == record["prompt_tokens"]
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
    estimate = base["attribution"]
    assert len(estimate["nll_delta"]) == 2 and estimate["base_nll"] == pytest.approx(ko["base_nll"], rel=1e-4)
    assert -1 <= base["attribution_vs_knockout_spearman"] <= 1
    assert record["conditions"]["placebo"]["attribution"] is None
    knock = pd.read_csv(out / "knockout.csv")
    assert set(knock.condition) >= {"baseline", "baseline (linear estimate)"}
    assert set(knock[knock.condition.str.endswith("estimate)")].metric) == {"nll_delta"}
    printed = capsys.readouterr().out
    assert "baseline" in printed and "placebo" in printed


def test_bad_path_is_a_one_line_error(tmp_path, capsys):
    for flag in ("--text", "--xsum"):  # refused by the flag's type (argparse exits 2)
        with pytest.raises(SystemExit) as stop:
            flow.main([flag, str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
        err = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and err.startswith(f"flow.py: error: argument {flag}:") and "\n" not in err


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


def test_corpus_mode_writes_intervals_and_resumes(tmp_path, capsys):
    """--docs N: per-document rows in docs.jsonl, means and paired differences with intervals,
    figures, the headline contrasts; a second run with more documents reuses the first ones."""
    data = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    out = tmp_path / "corpus"
    base = ["--model", "tiny", "--xsum", str(data), "--regions", "4", "--out", str(out)]
    assert flow.main([*base, "--docs", "3"]) == 0
    assert flow.main([*base, "--docs", "4"]) == 0
    assert "3 done, 1 to go" in capsys.readouterr().out
    lines = (out / "docs.jsonl").read_text().splitlines()
    ids = [json.loads(line)["doc_id"] for line in lines]
    assert len(ids) == 4 == len(set(ids)) and all(int(i) % 4 == 0 for i in ids)
    record = json.loads((out / "corpus.json").read_text())
    assert record["documents"] == sorted(ids) and record["manifest"]["prompt_style"] == "plain"
    contrasts = {(h["measure"], h["contrast"]) for h in record["headline"]}
    assert ("early_document_deep:final_token_value_profile", "paper - placebo") in contrasts
    summary = pd.read_csv(out / "corpus_summary.csv")
    diff = summary[(summary.kind == "difference") & (summary.measure == "final_token_profile")]
    assert set(diff.condition) == {"paper - baseline", "placebo - baseline"}
    assert (diff.n == 4).all() and (diff.lo <= diff["mean"] + 1e-12).all() and (diff["mean"] <= diff.hi + 1e-12).all()
    for name in ("corpus_profile_diff", "corpus_value_profile_diff", "corpus_layer_measures_diff"):
        assert (out / f"{name}.png").stat().st_size > 5000


def test_corpus_mode_refuses_a_changed_configuration_and_bad_arguments(tmp_path, capsys):
    data = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    out = tmp_path / "corpus"
    base = ["--model", "tiny", "--xsum", str(data), "--docs", "1", "--transition", "none", "--out", str(out)]
    assert flow.main([*base, "--regions", "4"]) == 0
    assert flow.main([*base, "--regions", "5"]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert flow.main(["--model", "tiny", "--docs", "2", "--out", str(tmp_path / "x")]) == 2
    assert flow.main([*base, "--knockout", "2"]) == 2


def test_corpus_causal_map_is_each_documents_attribution_estimate(tmp_path, tiny_model):
    """--docs with --attribution: per document and condition, the attribution estimate of every
    (band, region) knockout, equal to attribution_sweep run on that document alone."""
    import torch

    from at_probe.flow.attribution import attribution_sweep
    from at_probe.flow.probe import probe_pass
    from at_probe.models.prompts import build_prompt, continuation_ids
    from at_probe.interventions.transition import PaperTransition

    data = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    out = tmp_path / "corpus"
    assert flow.main(["--model", "tiny", "--xsum", str(data), "--docs", "2", "--regions", "4", "--attribution",
                      "--no-placebo", "--out", str(out)]) == 0
    record = json.loads((out / "docs.jsonl").read_text().splitlines()[1])
    assert "series" in record and "rows" not in record  # the compact layout (pack_rows)
    rows = [r for r in corpus.unpack_record(record) if r["measure"] == "attribution_nll"]
    band = -(-tiny_model.cfg.n_layers // 3)
    assert {r["condition"] for r in rows} == {"baseline", "paper"}
    doc = next(d for d in flow.load_records(data) if str(d["id"]) == record["doc_id"])
    ref = continuation_ids(tiny_model.tokenizer, doc["summary"])
    prompt = build_prompt(tiny_model.tokenizer, doc["document"], max_tokens=int(tiny_model.cfg.n_ctx) - len(ref))
    paper = PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)
    result, _ = probe_pass(tiny_model, prompt, paper, 4)
    est = attribution_sweep(tiny_model, prompt.tensor("cpu"), result.region_bounds, reference=torch.tensor([ref]),
                            band_size=band, labels=result.region_labels, transition=paper)
    assert len(rows) == 2 * len(est.bands) * len(est.region_labels) and len(est.bands) == 3
    got = {(r["layer"], r["region"]): r["value"] for r in rows if r["condition"] == "paper"}
    for i, (start, _) in enumerate(est.bands):
        for j, label in enumerate(est.region_labels):
            assert got[(start, label)] == pytest.approx(float(est.nll_delta[i, j]), abs=1e-6)
    assert max(abs(v) for v in got.values()) > 1e-4
    summary = pd.read_csv(out / "corpus_summary.csv")
    assert (summary[summary.measure == "attribution_nll"].kind == "difference").any()
    assert (out / "corpus_attribution_diff.png").is_file()


def _causal_run(out, rng) -> dict[tuple[str, str, int], float]:
    """A corpus run directory as ``flow.py --docs --attribution`` leaves it (tiny model: bands
    from layers 0, 3, 6), with random per-document rows; returns each (document, condition,
    band) sum over the early document (doc 01, doc 02 of four regions)."""

    regions = ["sink", "template", "doc 01", "doc 02", "doc 03", "doc 04", "instruction"]
    conditions = ("baseline", "paper", "placebo")
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"model": "tiny", "conditions": dict.fromkeys(conditions),
                                                   "attribution": True}))
    sums, lines = {}, []
    for doc_id in ("4", "8", "12", "16"):
        rows = []
        for cond in conditions:
            rows += [{"doc_id": doc_id, "condition": cond, "measure": f"early_document_deep:{m}", "layer": -1,
                      "region": "", "value": float(rng.normal())}
                     for m in ("final_token_profile", "final_token_value_profile")]
            for layer in (0, 3, 6):
                values = rng.normal(0, 0.05, len(regions))
                sums[(doc_id, cond, layer)] = float(values[2] + values[3])
                rows += [{"doc_id": doc_id, "condition": cond, "measure": "attribution_nll", "layer": layer,
                          "region": region, "value": float(v)} for region, v in zip(regions, values)]
        lines.append(json.dumps({"doc_id": doc_id, "prompt_tokens": 100, "dropped_tokens": 0,
                                 "series": corpus.pack_rows(rows)}))
    (out / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (out / "corpus.json").write_text(json.dumps({"seconds": 123.4}))
    return sums


def test_report_only_adds_the_causal_maps_early_document_contrasts_from_the_run_files(tmp_path, capsys):
    """--report-only rewrites a corpus run's report from docs.jsonl and its manifest, without a
    model (the README's causal-map numbers come from it): per band, the early document's summed
    estimate per condition and paper - placebo, paired over documents; the run's time is kept."""
    import numpy as np

    out = tmp_path / "run"
    sums = _causal_run(out, np.random.default_rng(0))
    assert flow.main(["--report-only", "--out", str(out)]) == 0
    assert "layers 3-5" in capsys.readouterr().out
    record = json.loads((out / "corpus.json").read_text())
    assert record["seconds"] == 123.4 and record["documents"] == ["12", "16", "4", "8"]
    causal = record["causal_map"]
    assert causal["regions"] == ["doc 01", "doc 02"]
    assert [b["layers"] for b in causal["bands"]] == [[0, 2], [3, 5], [6, 7]]
    docs = ("4", "8", "12", "16")
    for band, layer in zip(causal["bands"], (0, 3, 6)):
        baseline = sum(sums[(d, "baseline", layer)] for d in docs) / 4
        assert band["means"]["baseline"]["mean"] == pytest.approx(baseline)
        contrast = {c["contrast"]: c for c in band["contrasts"]}["paper - placebo"]
        assert contrast["n"] == 4 and contrast["mean"] == pytest.approx(
            sum(sums[(d, "paper", layer)] - sums[(d, "placebo", layer)] for d in docs) / 4)
    assert {h["contrast"] for h in record["headline"]} == {"paper - baseline", "placebo - baseline",
                                                           "paper - placebo"}
    assert (out / "corpus_summary.csv").is_file() and (out / "corpus_attribution_diff.png").is_file()


def test_report_only_takes_a_corpus_run_and_no_other_flag(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flow.main(["--report-only", "--docs", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "argument --docs: is not used with --report-only" in err
    assert flow.main(["--report-only", "--out", str(tmp_path / "none")]) == 2
    assert "argument --out" in capsys.readouterr().err and not (tmp_path / "none").exists()


@pytest.mark.parametrize("bucket", ["800", "1900"])
def test_committed_causal_map_is_computed_from_the_committed_documents(bucket):
    """The README's causal-map numbers (figures/flow-smollm2/<B>-causal/corpus.json, causal_map)
    are what early_document_attribution gives on the committed docs.jsonl: no stale copy."""
    from pathlib import Path

    run = Path(__file__).resolve().parents[2] / "figures" / "flow-smollm2" / f"{bucket}-causal"
    committed = json.loads((run / "corpus.json").read_text())["causal_map"]
    frame = pd.DataFrame([row for line in (run / "docs.jsonl").read_text().splitlines()
                          for row in corpus.unpack_record(json.loads(line)) if row["measure"] == "attribution_nll"])
    contrasts = [("paper", "baseline"), ("placebo", "baseline"), ("paper", "placebo")]
    recomputed = corpus.early_document_attribution(frame, contrasts, n_layers=30)
    assert json.loads(json.dumps(recomputed)) == committed  # floats survive JSON exactly


def test_corpus_report_of_one_document_says_why_it_has_no_interval(tmp_path, capsys):
    """The corpus report (--report-only) of a run with one document: each estimate prints its
    mean and why it has no interval, never a bare nan or a zero-width interval; corpus.json
    holds null with the reason (standard JSON); with two documents every interval is marked."""
    import numpy as np

    out = tmp_path / "run"
    _causal_run(out, np.random.default_rng(0))
    lines = (out / "docs.jsonl").read_text().splitlines(keepends=True)
    (out / "docs.jsonl").write_text(lines[0])
    assert flow.main(["--report-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    estimates = [line for line in printed.splitlines() if line.startswith("  ")]  # headline, causal map
    assert len(estimates) == 6 + 3 * 6 and "nan" not in printed.lower()
    assert all(line.endswith(", interval n/a (1 document; an interval needs >= 2)") for line in estimates)
    assert "Warning: only 1 document: these cells have no interval." in printed

    def refuse(constant):
        raise ValueError(f"corpus.json holds {constant}")

    record = json.loads((out / "corpus.json").read_text(), parse_constant=refuse)
    assert all(h["ci95"] == [None, None] and h["reason"] == "1 document; an interval needs >= 2"
               for h in record["headline"])
    (out / "docs.jsonl").write_text("".join(lines[:2]))
    assert flow.main(["--report-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    estimates = [line for line in printed.splitlines() if line.startswith("  ")]
    assert estimates and all(line.endswith("n=2; 2 documents < 10: unreliable)") for line in estimates)
