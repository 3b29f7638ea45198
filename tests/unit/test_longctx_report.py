"""The long-context report on made-up records: pairing across runs, placebo draws averaged per
prompt, stratified intervals, the primary answer only once the run is complete."""

from __future__ import annotations

import numpy as np
import pytest

from at_probe.longctx.conditions import ALL_ROLES, PRIMARY_LENGTHS, PRIMARY_PROMPTS, ROLES, Comparison
from at_probe.longctx.report import accuracy, needle, paired, pool_records, primary, report, role_values
from at_probe.runs.stats import stratified_bootstrap_mean, stratified_interval

N_LAYERS = 3


def _record(prompt: str, setting: str, exact: bool, logprob: float, *, task: str = "passkey",
            length: int = 1024, depth: float = 0.5) -> dict:
    return {"doc_id": prompt, "setting": setting, "task": task, "length": length, "depth": depth, "exact": exact,
            "logprob": logprob, "needle_mass": [0.1, 0.2, 0.3], "needle_flow": [1.0, 2.0, 3.0],
            "prompt_tokens": length - 20, "answer_tokens": 4}


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


def test_the_tables_compare_conditions_on_the_same_prompts():
    """A cell's rows use the prompts every condition in it has: the baseline's three prompts
    are cut to the one SRA was scored on; other cells keep their own prompts."""
    sra = ROLES["sra"][0]
    records = [_record("p1", "baseline", True, -1.0), _record("p2", "baseline", False, -3.0),
               _record("p3", "baseline", False, -3.0), _record("p1", sra, False, -2.0),
               _record("q1", "baseline", False, -3.0, length=2048), _record("q2", "baseline", True, -1.0, length=2048)]
    records[3]["needle_mass"] = [0.3, 0.3, 0.3]
    pooled = pool_records([records])
    rows = {(r["length"], r["condition"]): r for r in accuracy(pooled)}
    assert (rows[(1024, "baseline")]["accuracy"], rows[(1024, "baseline")]["n"]) == (1.0, 1)
    assert (rows[(1024, "sra")]["accuracy"], rows[(1024, "sra")]["n"]) == (0.0, 1)
    assert (rows[(2048, "baseline")]["accuracy"], rows[(2048, "baseline")]["n"]) == (0.5, 2)
    layers = {(r["length"], r["condition"], r["layer"]): r for r in needle(pooled)}
    assert layers[(1024, "baseline", 0)]["n"] == 1 and layers[(1024, "sra", 0)]["needle_mass"] == pytest.approx(0.3)


def test_lengths_count_alike_when_pooled():
    """Pooled over lengths, a comparison is the mean of the per-length means (10 prompts at 1k
    with a difference of 1 and 2 at 2k with 0 pool to 0.5, not 10/12)."""
    temp = ROLES["temperature"][0]
    records = []
    for length, n, hit in ((1024, 10, True), (2048, 2, False)):
        for i in range(n):
            records += [_record(f"p{length}-{i}", "baseline", False, -3.0, length=length),
                        _record(f"p{length}-{i}", temp, hit, -3.0, length=length)]
    row = paired(pool_records([records]), Comparison("temperature", "baseline"), "exact", "passkey", [1024, 2048])
    assert row["mean"] == pytest.approx(0.5) and row["n"] == 12


def test_knockout_estimates_are_tabled_where_records_hold_them():
    with_estimate = _record("p1", "baseline", True, -1.0) | {"needle_knockout": [-0.5, 0.0, -1.5]}
    pooled = pool_records([[with_estimate, _record("p2", "baseline", True, -1.0)]])
    rows = report(pooled)["needle_knockout"]
    assert [r["needle_knockout"] for r in rows] == pytest.approx([-0.5, 0.0, -1.5]) and rows[0]["n"] == 1
    assert report(pool_records([[_record("p2", "baseline", True, -1.0)]]))["needle_knockout"] == []


def test_the_report_says_how_far_short_of_their_length_the_prompts_fall():
    short = _record("p2", "baseline", True, -1.0) | {"prompt_tokens": 900}
    rows = report(pool_records([[_record("p1", "baseline", True, -1.0), short]]))["prompt_lengths"]
    assert rows == [{"task": "passkey", "length": 1024, "prompts": 2, "min": 904, "median": 956.0, "max": 1008,
                     "short_by_over_5pct": 1}]


def test_the_report_holds_pooled_and_per_length_comparisons():
    result = report(pool_records([_run(5, {"baseline": 0.5, "sra": 0.5, "paper_example": 0.5,
                                           "placebo_example": 0.5})]))
    sra = [r for r in result["comparisons"] if r["comparison"] == "sra - baseline" and r["metric"] == "exact"]
    assert [r["lengths"] for r in sra] == [list(PRIMARY_LENGTHS), *([l] for l in PRIMARY_LENGTHS)]
    assert result["prompts"] == 15 and len(result["primary"]) == 2


def test_the_peers_comparisons_pool_with_the_bench_runs():
    """A peers run pooled with a bench run: each peer against its placebo's mean draw, adaptive
    temperature against the fixed temperature of the bench's run."""
    bench = _run(4, {"baseline": 0.5, "temperature": 0.5})
    peers = _run(4, {"sink_scaling": 1.0, "sink_scaling_placebo": 0.0, "adaptive_temperature": 1.0}, seed=1)
    result = report(pool_records([bench, peers]))
    rows = {r["comparison"]: r for r in result["comparisons"]
            if r["metric"] == "exact" and r["lengths"] == list(PRIMARY_LENGTHS)}
    assert rows["sink_scaling - sink_scaling_placebo"]["mean"] == 1.0 and rows["sink_scaling - sink_scaling_placebo"]["n"] == 12
    assert rows["adaptive_temperature - temperature"]["n"] == 12
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
