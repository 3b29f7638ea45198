"""The long-context report on made-up records: pairing across runs, placebo draws averaged per
prompt, stratified intervals, the primary answer only once the run is complete."""

from __future__ import annotations

import numpy as np
import pytest

from at_probe.longctx.conditions import ALL_ROLES, PRIMARY_LENGTHS, PRIMARY_PROMPTS, ROLES, Comparison
from at_probe.longctx.report import (
    accuracy,
    needle,
    paired,
    plan_of,
    planned_pairs,
    pool_records,
    primary,
    report,
    role_values,
)
from at_probe.runs.stats import stratified_bootstrap_mean, stratified_interval

N_LAYERS = 3


def _record(prompt: str, setting: str, exact: bool, logprob: float, *, task: str = "passkey",
            length: int = 1024, depth: float = 0.5) -> dict:
    return {"doc_id": prompt, "setting": setting, "task": task, "length": length, "depth": depth, "exact": exact,
            "logprob": logprob, "needle_mass": [0.1, 0.2, 0.3], "needle_flow": [1.0, 2.0, 3.0],
            "prompt_tokens": length - 20, "answer_tokens": 4, "answer": " 12345",
            "greedy": " 12345" if exact else " a12345", "tokens_right": 6 if exact else 0}


def _run(n: int, effect: dict[str, float], lengths=PRIMARY_LENGTHS, seed: int = 0) -> list[dict]:
    """``n`` prompts per length; each role's exact match drawn with its success rate."""
    rng = np.random.default_rng(seed)
    out = []
    for length in lengths:
        for i in range(n):
            prompt = f"passkey-{length}-0.5-{i:03d}"
            for role, rate in effect.items():
                for setting in ALL_ROLES[role]:
                    hit = bool(rng.random() < rate)
                    out.append(_record(prompt, setting, hit, -0.5 if hit else -3.0, length=length))
    return out


def test_placebo_draws_are_averaged_per_prompt_and_need_every_draw():
    draws = ROLES["placebo_example"]
    records = [_record("p1", draws[0], True, -1.0), _record("p1", draws[1], False, -3.0),
               _record("p1", draws[2], True, -2.0), _record("p2", draws[0], True, -1.0)]
    pooled = pool_records([records])
    assert role_values(pooled, "placebo_example", "exact") == {"p1": pytest.approx(2 / 3)}
    assert role_values(pooled, "placebo_example", "logprob") == {"p1": pytest.approx(-2.0)}


def test_a_comparison_pairs_prompts_across_runs_and_counts_the_unpaired():
    primary_run = [_record("p1", "baseline", False, -2.0), _record("p2", "baseline", True, -1.0)]
    secondary_run = [_record("p1", ROLES["temperature"][0], True, -0.5), _record("p3", ROLES["temperature"][0], True, -0.5)]
    pooled = pool_records([primary_run, secondary_run])
    row = paired(pooled, Comparison("temperature", "baseline"), "logprob", "passkey", [1024])
    assert row["n"] == 1 and row["mean"] == pytest.approx(1.5) and row["n_one_role_only"] == 2


def test_a_pair_in_two_runs_keeps_the_fields_of_both_whatever_their_order():
    plain, knocked = _record("p1", "baseline", True, -1.0), _record("p1", "baseline", True, -1.0005)
    knocked["needle_knockout"] = [-0.5, 0.0, -1.5]
    for runs in ([[plain], [knocked]], [[knocked], [plain]]):
        assert pool_records(runs)[("p1", "baseline")]["needle_knockout"] == [-0.5, 0.0, -1.5]


def test_runs_that_disagree_on_a_pair_are_refused():
    a, b = _record("p1", "baseline", True, -1.0), _record("p1", "baseline", False, -1.0)
    with pytest.raises(ValueError, match="disagree"):
        pool_records([[a], [b]])


def test_the_primary_answer_waits_for_complete_cells_and_follows_the_interval():
    partial = primary(pool_records([_run(10, {"baseline": 0.5, "sra": 0.5, "paper_example": 0.5,
                                              "placebo_example": 0.5})]))
    assert all(not r["complete"] and r["answer"].startswith("incomplete run") for r in partial)
    strong = primary(pool_records([_run(PRIMARY_PROMPTS, {"baseline": 0.2, "sra": 0.9, "paper_example": 0.5,
                                                          "placebo_example": 0.5}, seed=1)]))
    sra, paper = strong
    assert sra["complete"] and sra["answer"] == "yes, better" and sra["ci97_5"][0] > 0
    assert paper["answer"] == "no detectable effect" and paper["ci97_5"][0] < 0 < paper["ci97_5"][1]
    assert sra["n"] == 3 * PRIMARY_PROMPTS and set(sra["n_per_length"].values()) == {PRIMARY_PROMPTS}
    worse = primary(pool_records([_run(PRIMARY_PROMPTS, {"baseline": 0.9, "sra": 0.1, "paper_example": 0.5,
                                                         "placebo_example": 0.5}, seed=2)]))
    assert worse[0]["answer"] == "yes, worse"


def test_the_primary_interval_is_wider_than_the_95_percent_one():
    rng = np.random.default_rng(0)
    groups = [rng.normal(0.1, 1, 50), rng.normal(0.0, 1, 80)]
    lo95, hi95 = stratified_bootstrap_mean(groups).ci95
    lo, hi = stratified_interval(groups, 0.975)
    assert lo < lo95 and hi > hi95
    assert stratified_interval(groups, 0.95) == pytest.approx((lo95, hi95))
    with pytest.raises(ValueError, match="level"):
        stratified_interval(groups, 1.0)


def test_accuracy_and_needle_tables():
    records = [_record("p1", "baseline", True, -1.0, depth=0.1), _record("p2", "baseline", False, -3.0, depth=0.1),
               _record("p3", "baseline", True, -1.0, depth=0.9)]
    pooled = pool_records([records])
    rows = {(r["depth"], r["condition"]): r for r in accuracy(pooled)}
    assert rows[(0.1, "baseline")]["accuracy"] == 0.5 and rows[(0.9, "baseline")]["accuracy"] == 1.0
    layers = [r for r in needle(pooled) if r["condition"] == "baseline"]
    assert [r["needle_mass"] for r in layers] == pytest.approx([0.1, 0.2, 0.3]) and layers[0]["n"] == 3


def test_the_tables_give_each_condition_its_own_prompts_and_the_baselines_on_them():
    """A partial condition does not cut a complete one: the baseline keeps its three prompts;
    SRA, scored on one, has the baseline's value on that one beside its own."""
    sra = ROLES["sra"][0]
    records = [_record("p1", "baseline", True, -1.0), _record("p2", "baseline", False, -3.0),
               _record("p3", "baseline", False, -3.0), _record("p1", sra, False, -2.0),
               _record("q1", sra, True, -1.0, length=2048)]  # the baseline lacks q1
    records[3]["needle_mass"] = [0.3, 0.3, 0.3]
    records[0]["needle_mass"] = [0.6, 0.6, 0.6]
    pooled = pool_records([records])
    rows = {(r["length"], r["condition"]): r for r in accuracy(pooled)}
    base, treated = rows[(1024, "baseline")], rows[(1024, "sra")]
    assert (base["accuracy"], base["n"], base["baseline_accuracy"]) == (pytest.approx(1 / 3), 3, pytest.approx(1 / 3))
    assert (treated["accuracy"], treated["n"], treated["baseline_accuracy"]) == (0.0, 1, 1.0)
    assert rows[(2048, "sra")]["baseline_accuracy"] is None
    layers = {(r["length"], r["condition"], r["layer"]): r for r in needle(pooled)}
    assert layers[(1024, "baseline", 0)]["n"] == 3
    assert layers[(1024, "sra", 0)]["needle_mass"] == pytest.approx(0.3)
    assert layers[(1024, "sra", 0)]["needle_mass_baseline"] == pytest.approx(0.6)
    assert layers[(2048, "sra", 0)]["needle_mass_baseline"] is None


def test_lengths_count_alike_when_pooled_and_a_running_cell_waits():
    """Pooled over lengths, a comparison is the mean of the per-length means (30 prompts at 1k
    with a difference of 1 and 20 at 2k with 0 pool to 0.5, not 30/50); a length whose cell
    the plan has not completed (4k: 25 of its 30 prompts paired) is left out and named, and
    so are its prompts of one role only."""
    temp = ROLES["temperature"][0]
    records = []
    for length, n, hit in ((1024, 30, True), (2048, 20, False), (4096, 25, True)):
        for i in range(n):
            records += [_record(f"p{length}-{i}", "baseline", False, -3.0, length=length),
                        _record(f"p{length}-{i}", temp, hit, -3.0, length=length)]
    records.append(_record("p4096-29", "baseline", False, -3.0, length=4096))  # its temperature one: to come
    plan = plan_of([
        {"tasks": ["passkey", "vt"], "lengths": [2048], "prompts": 100, "settings": ["baseline"]},
        {"tasks": ["passkey"], "lengths": [1024, 4096], "prompts": 30, "settings": ["baseline", temp]},
        {"tasks": ["passkey"], "lengths": [2048], "prompts": 20, "settings": ["baseline", temp]}])
    assert plan[("passkey", 2048)] == {temp: 20, "baseline": 100} and plan[("vt", 2048)] == {"baseline": 100}
    comparison = Comparison("temperature", "baseline")
    assert [planned_pairs(plan, comparison, "passkey", l) for l in (1024, 2048, 4096)] == [30, 20, 30]
    row = paired(pool_records([records]), comparison, "exact", "passkey", [1024, 2048, 4096], plan)
    assert row["mean"] == pytest.approx(0.5) and row["n"] == 50 and row["lengths_left_out"] == [4096]
    assert row["n_per_length"] == {"1024": 30, "2048": 20, "4096": 25} and row["n_one_role_only"] == 0
    finished = paired(pool_records([records]), comparison, "exact", "passkey", [1024, 2048, 4096])
    assert finished["lengths_left_out"] == [] and finished["n"] == 75 and finished["n_one_role_only"] == 1
    assert finished["mean"] == pytest.approx(2 / 3)


def test_knockout_estimates_are_tabled_where_records_hold_them():
    records = [_record(f"p{i}", "baseline", True, -1.0) | {"needle_knockout": [-0.5 * i, 0.0, -1.5],
                                                           "needle_knockout_exact": -float(i * i)}
               for i in range(1, 4)]
    result = report(pool_records([[*records, _record("p9", "baseline", True, -1.0)]]))
    rows = result["needle_knockout"]
    assert [r["needle_knockout"] for r in rows] == pytest.approx([-1.0, 0.0, -1.5]) and rows[0]["n"] == 3
    (total,) = result["knockout_totals"]
    assert (total["n"], total["estimate"], total["exact"]) == (3, pytest.approx(-2.5), pytest.approx(-14 / 3))
    assert total["pearson_r"] == pytest.approx(np.corrcoef([-2.0, -2.5, -3.0], [-1, -4, -9])[0, 1])
    assert report(pool_records([[_record("p2", "baseline", True, -1.0)]]))["needle_knockout"] == []
    sra = [r | {"setting": ROLES["sra"][0], "needle_knockout_exact": r["needle_knockout_exact"] + 1.0} for r in records]
    rows = [r for r in report(pool_records([records, sra]))["comparisons"] if r["metric"] == "needle_knockout_exact"]
    assert [(r["comparison"], r["mean"], r["n"]) for r in rows] == [("sra - baseline", pytest.approx(1.0), 3)]


def test_knockout_totals_sum_in_prompt_order_whatever_the_hash_seed():
    """Float sums depend on their order: the prompts are taken sorted, not in a set's order
    (which changes with PYTHONHASHSEED), so a regenerated report.json keeps every last digit."""
    values = [1e16, 1.0, -1e16, 3.0, 0.1, 1e-3, 7e15, -7e15, 0.3, 2.5] * 2
    records = [_record(f"p{i:02d}", "baseline", True, -1.0) | {"needle_knockout": [v, 0.0], "needle_knockout_exact": v}
               for i, v in enumerate(values)]
    (total,) = report(pool_records([records]))["knockout_totals"]
    in_order = np.array(values)  # p00, p01, ... sorted
    assert (total["estimate"], total["exact"]) == (float(in_order.mean()), float(in_order.mean()))


def test_reply_matches_are_compared_and_tabled_where_records_hold_them():
    base = [_record(f"p{i}", "baseline", False, -1.0) | {"reply": "x", "reply_match": m, "reply_ended": i > 0}
            for i, m in enumerate((0.0, 0.5, 1.0))]
    sra = [r | {"setting": ROLES["sra"][0], "reply_match": r["reply_match"] / 2, "reply_ended": True} for r in base]
    result = report(pool_records([base, sra]))
    rows = [r for r in result["comparisons"] if r["metric"] == "reply_match"]
    assert [(r["comparison"], r["mean"], r["n"]) for r in rows] == [("sra - baseline", pytest.approx(-0.25), 3)]
    table = {r["condition"]: r for r in result["replies"]}
    assert (table["sra"]["reply_match"], table["sra"]["baseline_reply_match"], table["sra"]["n"]) == (0.25, 0.5, 3)
    assert (table["sra"]["reply_ended"], table["baseline"]["reply_ended"]) == (1.0, pytest.approx(2 / 3))
    plain = report(pool_records([[_record("p1", "baseline", True, -1.0)]]))
    assert plain["replies"] == [] and all(r["metric"] != "reply_match" for r in plain["comparisons"])
    with pytest.raises(ValueError, match="reply"):  # the same pair replied otherwise (another --reply-tokens)
        pool_records([base, [base[0] | {"reply": "x y"}]])


def test_openings_tell_a_reply_that_opens_otherwise_from_one_that_misses_the_key():
    records = [_record("p1", "baseline", True, -1.0),
               _record("p2", "baseline", False, -3.0),  # opens with " a", every digit right after the space
               _record("p3", "baseline", False, -9.0) | {"greedy": " a12845"},  # a wrong digit
               _record("p4", "baseline", False, -5.0) | {"greedy": " 92345", "tokens_right": 1},
               _record("v1", "baseline", False, -20.0, task="vt") | {"answer": " AB, CD", "greedy": ":AB, CD"}]
    (row,) = report(pool_records([records]))["openings"]
    assert (row["task"], row["n"]) == ("passkey", 4)
    assert (row["exact"], row["opened"], row["digits_after_opening"]) == (0.25, 0.5, 0.5)
    placebo = ROLES["placebo_example"]
    draws = [_record("p1", s, i == 0, -1.0) for i, s in enumerate(placebo)]
    rows = [r for r in report(pool_records([draws]))["openings"] if r["condition"] == "placebo_example"]
    assert [(r["n"], r["exact"], r["digits_after_opening"]) for r in rows] == [(1, pytest.approx(1 / 3), 1.0)]


def test_the_report_says_how_far_short_of_their_length_the_prompts_fall():
    short = _record("p2", "baseline", True, -1.0) | {"prompt_tokens": 900}
    rows = report(pool_records([[_record("p1", "baseline", True, -1.0), short]]))["prompt_lengths"]
    assert rows == [{"task": "passkey", "length": 1024, "prompts": 2, "min": 904, "median": 956.0, "max": 1008,
                     "short_by_over_5pct": 1}]


def test_the_report_holds_pooled_and_per_length_comparisons():
    result = report(pool_records([_run(20, {"baseline": 0.5, "sra": 0.5, "paper_example": 0.5,
                                                  "placebo_example": 0.5})]))
    sra = [r for r in result["comparisons"] if r["comparison"] == "sra - baseline" and r["metric"] == "exact"]
    assert [r["lengths"] for r in sra] == [list(PRIMARY_LENGTHS), *([l] for l in PRIMARY_LENGTHS)]
    assert result["prompts"] == 3 * 20 and len(result["primary"]) == 2


def test_the_peers_comparisons_pool_with_the_bench_runs():
    """A peers run pooled with a bench run: each peer against its placebo's mean draw, adaptive
    temperature against the fixed temperature of the bench's run."""
    bench = _run(20, {"baseline": 0.5, "temperature": 0.5})
    peers = _run(20, {"sink_scaling": 1.0, "sink_scaling_placebo": 0.0, "adaptive_temperature": 1.0}, seed=1)
    result = report(pool_records([bench, peers]))
    rows = {r["comparison"]: r for r in result["comparisons"]
            if r["metric"] == "exact" and r["lengths"] == list(PRIMARY_LENGTHS)}
    assert rows["sink_scaling - sink_scaling_placebo"]["mean"] == 1.0
    peers_n = rows["sink_scaling - sink_scaling_placebo"]["n"]
    assert peers_n == rows["adaptive_temperature - temperature"]["n"] == 3 * 20
    assert {"sink_scaling", "adaptive_temperature"} <= {r["condition"] for r in result["accuracy"]}


def test_the_peers_settings_are_canonical_and_run_under_chunked_attention():
    """Each peer setting is its own canonical name under the development profiles it names, and
    builds for SmolLM2 with the bench's blocks of 128 query rows."""
    import json
    from pathlib import Path

    from at_probe.longctx.conditions import PEER_PROFILES, PEER_ROLES, PEERS_RUN_ROLES, settings_of
    from at_probe.models.loading import SMOLLM2_SHAPE
    from at_probe.xsum import check_settings, parse_settings

    profiles = json.loads((Path(__file__).parents[2] / PEER_PROFILES).read_text())["profiles"]
    settings = settings_of(PEERS_RUN_ROLES)
    built = parse_settings(";".join(settings), profiles)
    assert list(built) == settings and len(settings) == 1 + sum(len(v) for v in PEER_ROLES.values())
    check_settings(built, SMOLLM2_SHAPE, attention_rows=128)


def test_the_command_pools_a_length_only_once_the_manifests_say_its_cells_are_done(tmp_path, capsys):
    """longctx_report.py reads each run's manifest: 2k, with 25 of the 30 planned prompts paired,
    stays out of the pooled rows (and of the figure's, which would then repeat 1k) until done."""
    import json

    from at_probe.cli import longctx_report

    temp = ROLES["temperature"][0]
    runs = {"primary": (["baseline"], _run(30, {"baseline": 0.5}, lengths=(1024, 2048))),
            "secondary": ([temp], [r for r in _run(30, {"temperature": 0.5}, lengths=(1024, 2048), seed=1)
                                   if not (r["length"] == 2048 and r["doc_id"] >= "passkey-2048-0.5-025")])}
    for name, (settings, records) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert longctx_report.main([str(tmp_path / "primary"), str(tmp_path / "secondary")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"no manifest.json in {tmp_path / 'primary'}, {tmp_path / 'secondary'}")
    for name in runs:  # a manifest of another command
        (tmp_path / name / "manifest.json").write_text(json.dumps({"model": "tiny"}))
    assert longctx_report.main([str(tmp_path / "primary"), str(tmp_path / "secondary")]) == 2
    assert "argument runs: a manifest.json that is not longctx.py's" in capsys.readouterr().err
    for name, (settings, _) in runs.items():
        manifest = {"tasks": ["passkey"], "lengths": [1024, 2048], "prompts": 30, "settings": settings}
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    runs_args = [str(tmp_path / "primary"), str(tmp_path / "secondary")]
    assert longctx_report.main([*runs_args, "--out", str(out)]) == 0
    rows = [r for r in json.loads((out / "report.json").read_text())["comparisons"]
            if (r["comparison"], r["metric"]) == ("temperature - baseline", "exact")]
    assert [(r["lengths"], r["n"], r["lengths_left_out"]) for r in rows] == [
        ([1024, 2048], 30, [2048]), ([1024], 30, []), ([2048], 25, [])]
    figure = (out / "longctx_paired.csv").read_text()
    assert ",all," not in figure and ",2048,2048," in figure  # only the per-length rows
