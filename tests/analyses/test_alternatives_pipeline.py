"""The alternatives end to end on the tiny model: development profiling and selection, the
test run of its choices, corpus flow with them, and the side-by-side methods report."""

from __future__ import annotations

import json

import pytest

from at_probe.xsum import ALTERNATIVES
from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

alternatives_select = load_script("alternatives_select")
xsum_eval = load_script("xsum_eval")
flow = load_script("flow")
methods_report = load_script("methods_report")


pytestmark = pytest.mark.slow  # SmolLM2 or whole pipelines: 15-40 s a test on 2 CPU cores


@pytest.fixture(scope="module")
def selection_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("alt") / "dev"
    args = [
        "--model",
        "tiny",
        "--data",
        str(require_shared(XSUM_DIR)),
        "--bucket",
        "800",
        "--docs",
        "2",
        "--profile-docs",
        "1",
        "--regions",
        "4",
        "--targets",
        "instruction",
        "--max-new-tokens",
        "12",
        "--batch-size",
        "2",
        "--out",
        str(out),
    ]
    assert alternatives_select.main(args) == 0
    return out, args


def test_selection_profiles_and_roles(selection_run):
    out, _ = selection_run
    sel = json.loads((out / "selection.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["documents"]).isdisjoint(manifest["profile_documents"])
    assert sel["profiles"]["profile_documents"] == manifest["profile_documents"]
    assert all(int(d) % 4 != 0 for d in manifest["documents"] + manifest["profile_documents"])
    ranking = sel["profiles"]["head_ranking"]["instruction"]
    assert len(ranking) == 8 * 4 and [r["delta"] for r in ranking] == sorted(r["delta"] for r in ranking)
    assert len(sel["profiles"]["position_bias"]["density"]) == 8
    sinks = sel["profiles"]["sink_head_ranking"]  # both scaling directions on every head, ACT on layers 2..L-2
    assert {name: len(r) for name, r in sinks.items()} == {"scale_down": 32, "scale_up": 32, "calibration": 5 * 4}
    assert {r["layer"] for r in sinks["calibration"]} == set(range(2, 7))
    assert set(sel["selected"]) == set(ALTERNATIVES)  # every method by default
    for method, setting in sel["selected"].items():  # the lowest development NLL of its method
        ours = {n: v for n, v in sel["mean_nll"].items() if n.split(":")[0] == method}
        assert sel["mean_nll"][setting] == min(ours.values())
    assert sel["roles"]["emphasis_span_placebo"] == sel["roles"]["emphasis_placebo"]
    assert list(sel["roles"]) == [
        "baseline",
        "emphasis_selected",
        "emphasis_placebo",
        "emphasis_span_placebo",  # the same setting as emphasis_placebo for the instruction
        "calibration_selected",
        "calibration_placebo",
        "temperature_selected",
        "sink_scaling_selected",
        "sink_scaling_placebo",
        "sink_calibration_selected",
        "sink_calibration_placebo",
        "adaptive_temperature_selected",  # no placebo: its control is the fixed temperature
        "multiscale_positions_selected",
        "multiscale_positions_placebo",
    ]


def test_rerun_resumes_without_new_work(selection_run):
    out, args = selection_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".jsonl"}
    assert alternatives_select.main(args) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".jsonl"} == before


def test_test_run_and_corpus_flow_of_the_selection(selection_run, tmp_path):
    out, _ = selection_run
    test = tmp_path / "test"
    assert (
        xsum_eval.main(
            [
                "--model",
                "tiny",
                "--data",
                str(XSUM_DIR),
                "--bucket",
                "800",
                "--limit",
                "2",
                "--max-new-tokens",
                "12",
                "--batch-size",
                "2",
                "--selection",
                str(out / "selection.json"),
                "--out",
                str(test),
            ]
        )
        == 0
    )
    records = [json.loads(l) for l in (test / "records.jsonl").read_text().splitlines()]
    manifest = json.loads((test / "manifest.json").read_text())
    assert len(records) == 2 * 13 and set(manifest["roles"]) >= {"emphasis_placebo", "calibration_placebo"}
    nll = {(r["doc_id"], r["setting"]): r["summary_nll"] for r in records}
    for setting in manifest["settings"][1:]:  # every intervention and placebo acts
        assert any(abs(v - nll[(d, "baseline")]) > 1e-5 for (d, s), v in nll.items() if s == setting), setting

    corpus = tmp_path / "flow"
    base = ["--model", "tiny", "--xsum", str(XSUM_DIR / "token_800_evaluation.json.gz"), "--docs", "2",
            "--selection", str(out / "selection.json"), "--out", str(corpus)]
    assert flow.main([*base, "--regions", "4"]) == 0
    result = json.loads((corpus / "corpus.json").read_text())
    contrasts = {h["contrast"] for h in result["headline"]}
    assert {"emphasis - baseline", "emphasis - emphasis_placebo", "calibration - calibration_placebo",
            "temperature - baseline"} <= contrasts
    assert flow.main([*base, "--attribution"]) == 2  # the causal map runs for the transitions only
    assert flow.main([*base, "--split", "all"]) == 2  # the selection's own documents are not tested


def _report(comparisons: dict[str, float], roles: dict[str, str]) -> dict:
    est = lambda m: {"mean": m, "ci95": [m - 0.01, m + 0.01], "n": 5}  # noqa: E731
    return {
        "buckets": {"800": {"roles": roles}},
        "comparisons": {
            c: {metric: {"800": est(m)} for metric in methods_report.METRICS} for c, m in comparisons.items()
        },
    }


def test_methods_report_puts_both_families_on_one_table(tmp_path):
    paper = _report(
        {"paper_selected - baseline": 0.1, "paper_selected - placebo_selected": 0.2},
        {"paper_selected": "paper:alpha=1.0,beta=0.5,k=2"},
    )
    alt = _report({"temperature_selected - baseline": -0.3}, {"temperature_selected": "temperature:tau=0.7"})
    for name, r in (("p.json", paper), ("a.json", alt)):
        (tmp_path / name).write_text(json.dumps(r))
    assert (
        methods_report.main([str(tmp_path / "p.json"), str(tmp_path / "a.json"), "--out", str(tmp_path)]) == 0
    )
    table = (tmp_path / "methods_table.md").read_text()
    assert "| paper transition | placebo | 800 | 5 | +0.200 [+0.190, +0.210]" in table
    assert "| temperature | baseline | 800 | 5 | -0.300 [-0.310, -0.290]" in table
    assert (tmp_path / "methods_compared.png").is_file()


def test_methods_report_names_the_peers_and_the_transitions_parts(tmp_path):
    roles = {"sink_scaling_selected": "sink_scaling:rate=2.0", "paper_move_selected": "paper:parts=move",
             "paper_move_placebo": "placebo:parts=move,seed=0", "paper_prune_sink_selected": "paper:parts=prune+sink"}
    comparisons = {"sink_scaling_selected - sink_scaling_placebo": 0.1, "paper_move_selected - paper_move_placebo": 0.2,
                   "paper_prune_sink_selected - baseline": 0.3}
    (tmp_path / "p.json").write_text(json.dumps(_report(comparisons, roles)))
    assert methods_report.main([str(tmp_path / "p.json"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "methods_table.md").read_text()
    assert "| sink scaling (ZeroTuning) | placebo | 800 | 5 | +0.100" in table
    assert "| transition parts: move | placebo | 800 | 5 | +0.200" in table
    assert "| transition parts: prune+sink | baseline | 800 | 5 | +0.300" in table


def test_methods_report_names_each_emphasis_placebo_by_kind(tmp_path):
    heads = "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=2"
    span = "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=2"
    roles = {"emphasis_selected": "emphasis:alpha=0.01,target=document,top=2", "emphasis_placebo": heads,
             "emphasis_span_placebo": span}
    comparisons = {"emphasis_selected - emphasis_placebo": 0.1,
                   "emphasis_selected - emphasis_span_placebo": 0.2}
    (tmp_path / "a.json").write_text(json.dumps(_report(comparisons, roles)))
    (tmp_path / "same.json").write_text(json.dumps(_report(comparisons, {**roles, "emphasis_placebo": span})))
    assert methods_report.main([str(tmp_path / "a.json"), "--out", str(tmp_path / "a")]) == 0
    table = (tmp_path / "a" / "methods_table.md").read_text()
    assert "| emphasis (PASTA) | placebo (random heads) | 800 | 5 | +0.100" in table
    assert "| emphasis (PASTA) | placebo (random span) | 800 | 5 | +0.200" in table
    assert methods_report.main([str(tmp_path / "same.json"), "--out", str(tmp_path / "same")]) == 0
    table = (tmp_path / "same" / "methods_table.md").read_text()
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")]
    assert len(rows) == 1 and "placebo (random span)" in rows[0], "two roles of one setting: one row"


def test_reused_head_ranking_is_checked_and_recorded(selection_run, tmp_path):
    out, args = selection_run
    source = tmp_path / "source"
    source.mkdir()
    for name in ("selection.json", "manifest.json"):
        (source / name).write_bytes((out / name).read_bytes())
    reuse = [*args[: args.index("--out")], "--docs", "1", "--head-ranking-from", str(source / "selection.json"),
             "--out", str(tmp_path / "reuse")]
    assert alternatives_select.main(reuse) == 0
    sel = json.loads((source / "selection.json").read_text())
    (source / "selection.json").write_text(json.dumps({**sel, "roles": {}}, indent=2))  # refreshed, same ranking
    assert alternatives_select.main(reuse) == 0
    sel["profiles"]["head_ranking"]["instruction"] = sel["profiles"]["head_ranking"]["instruction"][::-1]
    (source / "selection.json").write_text(json.dumps(sel))
    assert alternatives_select.main(reuse) == 2, "another ranking: the run is refused"
    profiles = json.loads((tmp_path / "reuse" / "profiles.json").read_text())
    source = profiles["head_ranking_source"]
    first = json.loads((out / "selection.json").read_text())["profiles"]
    assert source["profile_documents"] == first["profile_documents"]
    assert profiles["head_ranking"] == first["head_ranking"] and not (tmp_path / "reuse" / "profile.jsonl").exists()
    assert profiles["sink_head_ranking"] == first["sink_head_ranking"]
    del sel["profiles"]["sink_head_ranking"]  # a run profiled before the sink edits: refused, naming the flag
    sel["profiles"]["head_ranking"]["instruction"] = first["head_ranking"]["instruction"]
    (tmp_path / "source" / "selection.json").write_text(json.dumps(sel))
    assert alternatives_select.main([*reuse[:-1], str(tmp_path / "old")]) == 2
    other = [*reuse[:1], "smollm2", *reuse[2:-1], str(tmp_path / "other")]  # another model: refused
    assert alternatives_select.main(other) == 2
    sel["profiles"]["sink_head_ranking"] = first["sink_head_ranking"]
    (tmp_path / "source" / "selection.json").write_text(json.dumps(sel))
    manifest = json.loads((out / "manifest.json").read_text())
    assert alternatives_select.main([*reuse[:-1], str(tmp_path / "same")]) == 0
    manifest["head_profilings"]["sink_head_ranking"]["scale_up"] = "SinkScaling(rate=3.0, ...) on all layers"
    (tmp_path / "source" / "manifest.json").write_text(json.dumps(manifest))
    assert alternatives_select.main([*reuse[:-1], str(tmp_path / "edited")]) == 2, "profiled with another edit"


def test_a_changed_profiling_edit_is_another_run(selection_run, monkeypatch, capsys):
    from at_probe.interventions import sink_scaling

    out, args = selection_run
    recorded = json.loads((out / "manifest.json").read_text())["head_profilings"]
    assert recorded["sink_head_ranking"]["scale_up"].startswith("SinkScaling(rate=2.0,")
    assert recorded["sink_head_ranking"]["calibration"].endswith("on layers 2-6")
    monkeypatch.setitem(sink_scaling.PROFILE_RATES, "scale_up", 3.0)  # profile.jsonl holds rate-2 deltas
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert alternatives_select.main(args) == 2
    assert "head_profilings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_top_larger_than_its_ranking_is_refused_before_profiling(monkeypatch, tmp_path, capsys):
    from at_probe.xsum import ALTERNATIVES_GRID

    # the tiny model's ACT search covers layers 2..6 x 4 heads: 20 heads
    monkeypatch.setitem(ALTERNATIVES_GRID, "sink_calibration", ("sink_calibration:top=21",))
    args = ["--model", "tiny", "--data", str(require_shared(XSUM_DIR)), "--bucket", "800", "--docs", "1",
            "--profile-docs", "1", "--methods", "sink_calibration", "--out", str(tmp_path / "run")]
    assert alternatives_select.main(args) == 2
    assert "sink_calibration:top=21" in capsys.readouterr().err and not (tmp_path / "run").exists()
    monkeypatch.setitem(ALTERNATIVES_GRID, "sink_calibration", ("sink_calibration:top=20",))
    from at_probe.cli.alternatives_select import check_rankings_fit, head_profilings
    from at_probe.models.loading import model_shape

    shape = model_shape("tiny")
    check_rankings_fit(["baseline", "sink_calibration:top=20"], head_profilings(["sink_calibration"], [], 8), shape)


def test_flow_runs_each_placebo_of_a_document_emphasis_once(selection_run, tmp_path):
    from at_probe.xsum import canonical_selection, run_settings

    out, _ = selection_run
    sel = json.loads((out / "selection.json").read_text())
    sel["profiles"]["head_ranking"]["document"] = sel["profiles"]["head_ranking"]["instruction"]
    sel["selected"]["emphasis"] = "emphasis:target=document,top=2"
    sel["test_settings"] = run_settings(canonical_selection(sel))
    (tmp_path / "selection.json").write_text(json.dumps(sel))
    (tmp_path / "manifest.json").write_text((out / "manifest.json").read_text())
    conditions = flow.selection_conditions(tmp_path / "selection.json", {"model": "tiny"})
    assert list(conditions) == ["baseline", "emphasis", "emphasis_placebo", "emphasis_span_placebo",
                                "calibration", "calibration_placebo", "temperature", "sink_scaling",
                                "sink_scaling_placebo", "sink_calibration", "sink_calibration_placebo",
                                "adaptive_temperature", "multiscale_positions", "multiscale_positions_placebo"]
    assert conditions["emphasis_placebo"].placebo == "heads"
    assert conditions["emphasis_span_placebo"].placebo == "span"
    instruction = flow.selection_conditions(out / "selection.json", {"model": "tiny"})
    assert "emphasis_span_placebo" not in instruction and instruction["emphasis_placebo"].placebo == "span"


def _document_selection(selection_run, directory):
    """The selection run's choices with the document emphasised (its ranking reused), consistent."""
    from at_probe.xsum import run_settings, setting_roles

    out, _ = selection_run
    sel = json.loads((out / "selection.json").read_text())
    sel["profiles"]["head_ranking"]["document"] = sel["profiles"]["head_ranking"]["instruction"]
    sel["selected"]["emphasis"] = "emphasis:alpha=0.01,target=document,top=2"
    sel["test_settings"], sel["roles"] = run_settings(sel), setting_roles(sel)
    directory.mkdir()
    (directory / "selection.json").write_text(json.dumps(sel, indent=1))
    (directory / "manifest.json").write_text((out / "manifest.json").read_text())
    return directory / "selection.json"


def test_a_test_run_gains_the_span_placebo_and_keeps_its_records(selection_run, tmp_path, capsys):
    selection = _document_selection(selection_run, tmp_path / "dev")
    test = tmp_path / "test"
    run = ["--model", "tiny", "--data", str(XSUM_DIR), "--bucket", "800", "--limit", "2",
           "--max-new-tokens", "12", "--batch-size", "2", "--out", str(test)]
    assert xsum_eval.main([*run, "--selection", str(selection)]) == 0
    manifest = json.loads((test / "manifest.json").read_text())
    span = manifest["roles"].pop("emphasis_span_placebo")
    manifest["settings"].remove(span)
    manifest["selection_sha256"] = "a selection file without the span placebo"
    (test / "manifest.json").write_text(json.dumps(manifest))  # the run as an older at_probe left it
    lines = (test / "records.jsonl").read_text().splitlines(keepends=True)
    old = "".join(l for l in lines if json.loads(l)["setting"] != span)
    (test / "records.jsonl").write_text(old)

    other = _document_selection(selection_run, tmp_path / "other")  # the same setting names, other heads
    sel = json.loads(other.read_text())
    sel["profiles"]["head_ranking"]["document"] = sel["profiles"]["head_ranking"]["document"][::-1]
    other.write_text(json.dumps(sel, indent=1))
    capsys.readouterr()
    assert xsum_eval.main([*run, "--selection", str(other)]) == 2
    assert "choices_sha256" in capsys.readouterr().err
    assert (test / "records.jsonl").read_text() == old
    assert json.loads((test / "manifest.json").read_text()) == manifest

    assert xsum_eval.main([*run, "--selection", str(selection)]) == 0
    now = (test / "records.jsonl").read_text()
    assert now.startswith(old), "the records already there are kept as they were"
    assert [json.loads(l)["setting"] for l in now[len(old):].splitlines()] == [span, span]
    grown = json.loads((test / "manifest.json").read_text())
    assert grown["roles"]["emphasis_span_placebo"] == span
    assert grown["choices_sha256"] == manifest["choices_sha256"]
    assert xsum_eval.main([*run, "--settings", ";".join([*grown["settings"], "temperature:tau=2"])]) == 2
    assert json.loads((test / "manifest.json").read_text()) == grown


def test_methods_table_says_why_an_interval_is_missing_and_marks_few_documents(tmp_path):
    """A cell without an interval reads ``n/a`` with its reason, never ``nan``; intervals over
    fewer than 10 documents are marked and the table says so."""
    report = _report({"paper_selected - baseline": 0.1}, {"paper_selected": "paper:alpha=1.0,beta=0.5,k=2"})
    report["comparisons"]["paper_selected - baseline"]["rougeL"]["800"] = {
        "mean": 0.1, "ci95": [None, None], "n": 1, "reason": "1 document; an interval needs >= 2"}
    (tmp_path / "p.json").write_text(json.dumps(report))
    assert methods_report.main([str(tmp_path / "p.json"), "--out", str(tmp_path)]) == 0
    table = (tmp_path / "methods_table.md").read_text()
    assert "nan" not in table.lower()
    assert "| +0.100, interval n/a (1 document; an interval needs >= 2) |" in table
    assert "+0.100 [+0.090, +0.110] (5 documents < 10: unreliable)" in table
    assert "Warning: the marked intervals are over fewer than 10 documents" in table


def _transitions_selection(tmp_path, paper: str = "paper:alpha=1.5,beta=0.8,k=1", **manifest):
    """A development sweep of xsum_select.py as its selection.json and manifest.json would be."""
    from at_probe.runs.runfiles import file_sha256
    from at_probe.xsum import bucket_file, run_settings

    run = tmp_path / "transitions"
    run.mkdir()
    selection = {"paper": paper, "sra": "sra:"}
    (run / "selection.json").write_text(json.dumps({**selection, "test_settings": run_settings(selection)}))
    data = bucket_file(require_shared(XSUM_DIR), "800")
    (run / "manifest.json").write_text(json.dumps({"model": "tiny", "bucket": "800", "split": "development",
                                                   "data_sha256": file_sha256(data), "max_new_tokens": 12,
                                                   **manifest}))
    return run / "selection.json"


def test_parts_of_a_transition_selection_become_methods_of_the_test_run(tmp_path):
    args = ["--model", "tiny", "--bucket", "800", "--docs", "1", "--profile-docs", "1", "--max-new-tokens", "12",
            "--methods", "adaptive_temperature", "--batch-size", "1"]
    parts = _transitions_selection(tmp_path)
    assert alternatives_select.main([*args, "--parts-of", str(parts), "--out", str(tmp_path / "run")]) == 0
    sel = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert sel["parts_of"]["paper"] == "paper:alpha=1.5,beta=0.8,k=1"
    roles = sel["roles"]
    assert roles["paper_all_selected"] == "paper:alpha=1.5,beta=0.8,k=1"  # all three parts: the full version
    assert roles["paper_prune_sink_selected"] == "paper:alpha=1.5,beta=0.8,k=1,parts=prune+sink"
    placebos = sorted(r for r in roles if r.startswith("paper_") and r.endswith("_placebo"))
    assert placebos == ["paper_all_placebo", "paper_move_placebo", "paper_prune_move_placebo",
                        "paper_sink_move_placebo"], "only a part that moves mass has a placebo"
    assert roles["paper_sink_move_placebo"] == "placebo:alpha=1.5,beta=0.8,k=1,parts=sink+move,seed=0"
    swept = json.loads((tmp_path / "run" / "manifest.json").read_text())["settings"]
    assert swept == ["baseline", "adaptive_temperature:"], "the parts are not swept"
    profiles = json.loads((tmp_path / "run" / "profiles.json").read_text())
    assert set(profiles) == {"profile_documents", "head_ranking_source"}, "nothing profiled that no method needs"
    assert not (tmp_path / "run" / "profile.jsonl").exists()

    other = tmp_path / "other"
    other.mkdir()
    wrong = _transitions_selection(other, bucket="1900")
    assert alternatives_select.main([*args, "--parts-of", str(wrong), "--out", str(tmp_path / "wrong")]) == 2
    assert not (tmp_path / "wrong").exists(), "refused before the run directory is made"
