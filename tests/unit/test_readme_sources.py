"""The README's numbers come from committed files (issue #20, item 11): every file it cites
exists, and the measured ratios it quotes equal the committed benchmark files, rounded as shown.
"The README" is README.md and the pages of docs/ (issue #21: the findings live in docs/findings.md)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# whitespace collapsed: claims wrap lines; a claim must lie within one file (files joined by a NUL)
README = "\0".join(" ".join(path.read_text().split()) for path in DOCUMENTS)


def _ratio(file: str, *keys: str) -> str:
    value = json.loads((ROOT / "figures" / file).read_text())
    for key in keys:
        value = value[key]
    return f"{value:.2f}x"


def test_every_cited_figures_path_exists():
    cited = set(re.findall(r"figures/[A-Za-z0-9_./*-]+", README))
    missing = [p for p in sorted(cited) if not list(ROOT.glob(p.rstrip("/.")))]
    assert not missing, f"README.md or docs/ cite files that are not committed: {missing}"


@pytest.mark.parametrize(
    ("claim", "file", "keys"),
    [
        ("emphasis on one head in each of the last 15 layers {}", "bench-cpu/alternatives_1900.json",
         ("emphasis_steering", "ratio_median")),
        ("calibration on the last 15 layers {}", "bench-cpu/alternatives_1900.json",
         ("position_calibration", "ratio_median")),
        ("temperature on the last 15 layers {}", "bench-cpu/alternatives_1900.json",
         ("attention_temperature", "ratio_median")),
        ("against the paper transition's {}", "bench-cpu/alternatives_1900.json",
         ("paper_transition", "ratio_median")),
        ("and SRA's {} in the same run", "bench-cpu/alternatives_1900.json", ("sra_transition", "ratio_median")),
        ("| 2 CPU cores, SmolLM2 (float32) | {}", "bench-cpu/smollm2_generation.json",
         ("bridge_over_hf_throughput",)),
        ("| 2 CPU cores, SmolLM2 (float32) | 0.91x | {}", "bench-cpu/smollm2_generation.json",
         ("transition_over_plain_throughput",)),
        ("| 2 CPU cores, SmolLM2 (float32) | 0.91x | 0.94x | {} |", "bench-cpu/alternatives_1900.json",
         ("probe", "ratio_median")),
    ],
)
def test_quoted_cpu_ratios_are_the_committed_ones(claim, file, keys):
    """A quoted overhead is the committed benchmark's value (README said 1.16x for the probe
    where the file says 1.19x)."""
    assert claim.format(_ratio(file, *keys)) in README


def _records(run: str) -> dict[tuple[str, str], dict]:
    path = ROOT / "figures" / "xsum-smollm2" / run / "records.jsonl"
    return {(r["doc_id"], r["setting"]): r for r in map(json.loads, path.read_text().splitlines())}


def test_development_counts_are_those_of_the_selection_files():
    """"the NLL interval of 38 of the 72 settings lay above 0 for 800 tokens, of 32 for 1900;
    below 0 for 2 and 0", counted from ``minus_baseline`` of the committed selections."""
    above, below = [], []
    for bucket in ("800", "1900"):
        table = json.loads((ROOT / f"figures/xsum-smollm2/dev-{bucket}/selection.json").read_text())["minus_baseline"]
        paper = [v["ci95"] for k, v in table.items() if k.startswith("paper:")]
        above.append(sum(lo > 0 for lo, _ in paper))
        below.append(sum(hi < 0 for _, hi in paper))
    claim = (f"the NLL interval of {above[0]} of the 72 settings lay above 0 for 800 tokens, of {above[1]} "
             f"for 1900; below 0 for {below[0]} and {below[1]}")
    assert claim in README


def test_rerun_agreement_is_that_of_the_committed_records():
    """The reruns' agreement with the test runs, record by record."""
    same = {run: sum(r["output"] == test[k]["output"] for k, r in rerun.items())
            for run, test_run in (("rerun-800", "test-800"), ("rerun-1900", "test-1900"),
                                  ("rerun-800-cpu", "test-800"))
            for rerun, test in [(_records(run), _records(test_run))]}
    assert f"gave {same['rerun-800'] + same['rerun-1900']} of the 24 outputs again" in README
    assert f"first two 800-bucket documents gave all {same['rerun-800-cpu']} outputs again" in README
    assert same["rerun-800-cpu"] == len(_records("rerun-800-cpu"))


def test_emphasis_per_document_medians_are_those_of_the_records():
    medians, big = {}, {}
    for bucket in ("800", "1900"):
        roles = json.loads((ROOT / f"figures/xsum-smollm2/alt-test-{bucket}/manifest.json").read_text())["roles"]
        records = _records(f"alt-test-{bucket}")
        docs = sorted({d for d, _ in records})
        diff = [records[(d, roles["emphasis_selected"])]["summary_nll"] - records[(d, "baseline")]["summary_nll"]
                for d in docs]
        medians[bucket] = f"{float(np.median(diff)):+.3f}".replace("-", "−")
        big[bucket] = sum(x < -0.7 for x in diff)
    assert f"its median per document is {medians['1900']} (800: {medians['800']})" in README
    assert f"{['no', 'one', 'two', 'three'][big['1900']]} documents drop by more than 0.7" in README


def test_placebo_seed_run_reproduction_is_that_of_the_records():
    """The 5-seed run's first batch, begun by an earlier snapshot of the code, regenerated by the
    committed code: the README's count of identical records."""
    repro, run = _records("placebo-seeds-repro-800"), _records("placebo-seeds-800")
    same = sum(r["output"] == run[k]["output"] and r["summary_nll"] == run[k]["summary_nll"]
               for k, r in repro.items())
    assert f"gave the same {same} of its {len(repro)} records" in README


def test_cpu_paper_outputs_equal_the_gpu_test_runs():
    run, test = _records("placebo-seeds-800"), _records("test-800")
    manifest = json.loads((ROOT / "figures/xsum-smollm2/placebo-seeds-800/manifest.json").read_text())
    paper = [k for k in run if k[1] == manifest["roles"]["paper_selected"]]
    same = sum(run[k]["output"] == test[k]["output"] for k in paper)
    assert f"setting gave the GPU test run's {same} outputs again" in README and same == len(paper)


def test_five_draw_primary_numbers_are_those_of_the_report():
    """The README's five-draw primary estimates (pooled, per bucket, seed 0 alone) are the
    committed ``placebo-seeds/`` report's, rounded to three decimals."""
    report = json.loads((ROOT / "figures/xsum-smollm2/placebo-seeds/report.json").read_text())
    rows = [r.split(",") for r in (ROOT / "figures/xsum-smollm2/placebo-seeds/xsum_roles.csv").read_text()
            .splitlines()[1:] if ",semantic_similarity," in r]
    fmt = lambda m, lo, hi: f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]".replace("-", "−")  # noqa: E731
    for _, _, bucket, mean, lo, hi, n in rows:
        claim = fmt(float(mean), float(lo), float(hi))
        assert claim in README, (bucket, claim)
    single = report["primary"]["single_draw_estimate"]
    assert fmt(single["mean"], *single["ci95"]) in README


def test_one_document_spearmans_name_the_document_they_come_from():
    """Issue #24: the README's one-document attribution agreement is the held-out document's
    (``figures/flow/``), and it says that ``make flow``'s built-in sample gives other numbers,
    which are those of ``figures/flow-sample/`` (made by the same command as ``make flow``)."""
    def spearman(run: str, condition: str) -> str:
        flow = json.loads((ROOT / "figures" / run / "flow.json").read_text())
        return f"{flow['conditions'][condition]['attribution_vs_knockout_spearman']:.2f}"

    assert f"Spearman {spearman('flow', 'baseline')} against exact" in README
    assert f"({spearman('flow', 'paper')} with the paper version, {spearman('flow', 'sra')} with SRA" in README
    sample = json.loads((ROOT / "figures/flow-sample/args.json").read_text())
    assert sample["text"] is None and sample["xsum"] is None, "flow-sample must be the built-in sample"
    claim = (f"its Spearman below is {spearman('flow-sample', 'baseline')} at baseline and "
             f"{spearman('flow-sample', 'paper')} with the paper version, `figures/flow-sample/`")
    assert "`make flow` runs the built-in sample document instead" in README and claim in README


def _longctx_report() -> dict:
    return json.loads((ROOT / "figures" / "longctx-smollm2" / "report.json").read_text())


def _longctx_row(comparison: str, metric: str, lengths: list[int], task: str = "passkey") -> dict:
    (row,) = [r for r in _longctx_report()["comparisons"]
              if (r["comparison"], r["metric"], r["lengths"], r["task"]) == (comparison, metric, lengths, task)]
    return row


def _interval(mean: float, lo: float, hi: float, digits: int = 2) -> str:
    fmt = lambda v: f"{v:+.{digits}f}".replace("-", "−").replace("+", "+" if v >= 0 else "")  # noqa: E731
    return f"{fmt(mean).lstrip('+')} [{fmt(lo)}, {fmt(hi)}]"


@pytest.mark.parametrize(("claim", "comparison"), [
    ("SRA's worked example minus the baseline, pooled: **{}** exact match", "sra - baseline"),
    ("The paper example minus its placebo, pooled: **+{}**", "paper_example - placebo_example"),
    ("SRA minus the baseline **{}** exact match", "sra - baseline"),  # README
    ("the paper's example minus its placebo **+{}** (no", "paper_example - placebo_example"),
])
def test_long_context_primary_answers_are_those_of_the_report(claim, comparison):
    """docs/longctx.md quotes the committed report's primary comparisons (97.5% intervals)."""
    (row,) = [r for r in _longctx_report()["primary"] if r["comparison"] == comparison]
    assert row["complete"] and row["n"] == 300
    assert claim.format(_interval(row["mean"], *row["ci97_5"])) in README


@pytest.mark.parametrize(("claim", "comparison", "length"), [
    ("SRA minus the baseline: 1k {}", "sra - baseline", 1024),
    (", 2k {}", "sra - baseline", 2048),
    ("its placebo: 1k {}", "paper_example - placebo_example", 1024),
    ("4k {};", "paper_example - placebo_example", 4096),
    ("the paper example {} and", "paper_example - baseline", 1024),
])
def test_long_context_numbers_are_those_of_the_report(claim, comparison, length):
    """docs/longctx.md quotes the committed report's per-length cells (95% intervals)."""
    row = _longctx_row(comparison, "exact", [length])
    assert row["n"] == 100
    assert claim.format(_interval(row["mean"], *row["ci95"])) in README


REPLIES = ROOT / "figures/longctx-smollm2/replies"


def _replies_report() -> dict:
    return json.loads((REPLIES / "report.json").read_text())


def _reply_records(length: int) -> list[dict]:
    """The replies run's records at ``length``; a line still being written (no newline yet) is left out."""
    lines = (REPLIES / "records.jsonl").read_text().split("\n")[:-1]
    return [r for r in map(json.loads, lines) if r["length"] == length]


@pytest.mark.parametrize(("claim", "comparison", "task", "metric"), [
    ("SRA minus the baseline is {}, as in exact match", "sra - baseline", "passkey", "reply_match"),
    ("the paper example minus its placebo {} (exact match:", "paper_example - placebo_example", "passkey",
     "reply_match"),
    ("(exact match: {}, the difference", "paper_example - placebo_example", "passkey", "exact"),
    ("emphasis minus its placebo +{}, but emphasis", "emphasis - emphasis_placebo", "passkey", "reply_match"),
    ("but emphasis minus the baseline only +{}, with", "emphasis - baseline", "passkey", "reply_match"),
    ("with emphasis's placebo minus the baseline at {}. Emphasis's", "emphasis_placebo - baseline", "passkey",
     "reply_match"),
    ("below its 0.33. SRA minus the baseline {};", "sra - baseline", "vt", "reply_match"),
    ("the paper example minus its placebo +{}, while", "paper_example - placebo_example", "vt", "reply_match"),
    ("while the paper example minus the baseline is {} and", "paper_example - baseline", "vt", "reply_match"),
    ("its placebo minus the baseline {}; emphasis", "placebo_example - baseline", "vt", "reply_match"),
    ("emphasis minus its placebo {} and minus the baseline", "emphasis - emphasis_placebo", "vt", "reply_match"),
    ("and minus the baseline {}, its placebo minus", "emphasis - baseline", "vt", "reply_match"),
    ("its placebo minus the baseline {}. - **Emphasis", "emphasis_placebo - baseline", "vt", "reply_match"),
    ("by +{} nats over the baseline", "emphasis - baseline", "vt", "logprob"),
    ("of its +{} over its placebo, more than half", "emphasis - emphasis_placebo", "vt", "logprob"),
    ("(emphasis itself +{} over the baseline)", "emphasis - baseline", "passkey", "reply_match"),
    ("than the baseline's ({}): a gain", "emphasis - baseline", "vt", "reply_match"),
])
def test_long_context_replies_are_those_of_their_report(claim, comparison, task, metric):
    """docs/longctx.md quotes the replies run's 1,024-token comparisons (95% intervals, 30 prompts)."""
    _assert_reply_claim(claim, comparison, task, metric, 1024)


@pytest.mark.parametrize(("claim", "comparison", "task", "metric"), [
    ("all 240 records. These are the first 30 prompts", None, "passkey", None),
    ("SRA minus the baseline +{}; the paper example minus its placebo +{} and", ("sra - baseline",
     "paper_example - placebo_example"), "passkey", "reply_match"),
    ("and minus the baseline +{}; emphasis minus its placebo +{}, emphasis minus the baseline +{}, its placebo "
     "minus the baseline {}: as at", ("paper_example - baseline", "emphasis - emphasis_placebo", "emphasis - baseline",
                                      "emphasis_placebo - baseline"), "passkey", "reply_match"),
    ("loops. SRA minus the baseline {}; the paper example minus its placebo +{}, minus the baseline {}, and its "
     "placebo minus the baseline {}; emphasis minus its placebo {} and minus the baseline {} (7 prompts lower, 1 "
     "higher, 22 tied; its upper bound is −0.025), its placebo minus the baseline {}. Of the 14",
     ("sra - baseline", "paper_example - placebo_example", "paper_example - baseline", "placebo_example - baseline",
      "emphasis - emphasis_placebo", "emphasis - baseline", "emphasis_placebo - baseline"), "vt", "reply_match"),
    ("log-probability by +{} nats over the baseline (+{} over its placebo", ("emphasis - baseline",
     "emphasis - emphasis_placebo"), "vt", "logprob"),
    ("both 1k and 2k ({} and {}; 30 prompts each", ("emphasis - baseline",) * 2, "vt", "reply_match"),  # findings
])
def test_long_context_2048_token_replies_are_those_of_their_report(claim, comparison, task, metric):
    """docs/longctx.md quotes the replies run's 2,048-token comparisons (95% intervals, 30 prompts)."""
    if comparison is None:
        records = [r for r in _reply_records(2048) if r["task"] == task]
        assert all(r["reply_match"] == float(r["exact"]) for r in records) and len(records) == 240
        assert claim in README
        return
    lengths = [[1024], [2048]] if claim.startswith("both 1k and 2k") else [[2048]] * len(comparison)
    intervals = []
    for name, length in zip(comparison, lengths):
        (row,) = [r for r in _replies_report()["comparisons"]
                  if (r["comparison"], r["metric"], r["lengths"], r["task"]) == (name, metric, length, task)]
        assert row["n"] == 30
        intervals.append(_interval(row["mean"], *row["ci95"]))
    assert claim.format(*intervals) in README


@pytest.mark.parametrize("claim", ["slightly less often at both lengths ({} over the 60 prompts",  # README
                                   "2,048; {} over the 60 prompts of both"])  # longctx.md
def test_long_context_replies_pooled_over_both_lengths_are_those_of_their_report(claim):
    (row,) = [r for r in _replies_report()["comparisons"] if (r["comparison"], r["metric"], r["lengths"], r["task"])
              == ("emphasis - baseline", "reply_match", [1024, 2048], "vt")]
    assert row["n"] == 60 and claim.format(_interval(row["mean"], *row["ci95"])) in README


def test_long_context_2048_token_reply_details_are_those_of_the_records():
    """The 2,048-token write-up's finer counts: ties, the prompts behind the passkey edges,
    emphasis's replies against the baseline's, and how many intervals exclude zero."""
    records = _reply_records(2048)
    cell = lambda task, prefix: {r["doc_id"]: r for r in records  # noqa: E731
                                 if r["task"] == task and r["setting"].startswith(prefix)}
    base, emph = cell("vt", "baseline"), cell("vt", "emphasis:")
    diff = [emph[p]["reply_match"] - base[p]["reply_match"] for p in base]
    lower, higher = sum(d < 0 for d in diff), sum(d > 0 for d in diff)
    assert f"({lower} prompts lower, {higher} higher, {len(diff) - lower - higher} tied;" in README
    (row,) = [r for r in _replies_report()["comparisons"] if (r["comparison"], r["metric"], r["lengths"], r["task"])
              == ("emphasis - baseline", "reply_match", [2048], "vt")]
    assert f"its upper bound is −{-row['ci95'][1]:.3f})" in README
    quoted = ("sra - baseline", "paper_example - placebo_example", "paper_example - baseline",
              "placebo_example - baseline", "emphasis - emphasis_placebo", "emphasis - baseline",
              "emphasis_placebo - baseline")
    rows = [r for r in _replies_report()["comparisons"] if r["metric"] == "reply_match" and r["task"] == "vt"
            and r["comparison"] in quoted and len(r["lengths"]) == 1]
    excluding = sum(r["ci95"][0] > 0 or r["ci95"][1] < 0 for r in rows)
    assert len(rows) == 14 and excluding == 2 and "Of the 14 variable-tracking" in README
    cut = lambda c: [r for r in c.values() if not r["reply_ended"]]  # noqa: E731
    assert f"({len(cut(emph))} of 30 against {len(cut(base))})" in README
    loops = [sum(_loops(r["reply"]) for r in c.values()) for c in (emph, base)]
    named = [sum(r["reply_match"] > 0 for r in c.values()) for c in (emph, base)]
    assert (f"loop no more ({loops[0]} loops against {loops[1]}), and name a variable in {named[0]} "
            f"against {named[1]}") in README
    plain = [r for r in cut(emph) if not _loops(r["reply"])]
    assert f"its {len(plain)} cut replies that do not loop list the document's facts" in README
    assert sorted(r["reply_match"] for r in plain) == [0.0] * (len(plain) - 1) + [0.25]  # "one names a variable"
    key = {p: r["exact"] for p, r in cell("passkey", "baseline").items()}
    gains = {prefix: (sum(r["exact"] and not key[p] for p, r in cell("passkey", prefix).items()),
                      sum(key[p] and not r["exact"] for p, r in cell("passkey", prefix).items()))
             for prefix in ("emphasis:", "emphasis_placebo:", "paper:")}
    assert gains == {"emphasis:": (1, 0), "emphasis_placebo:": (0, 2), "paper:": (0, 0)}
    assert "emphasis gains one key over the baseline, its placebo loses two; the paper example gives" in README
    unended = [r for r in cell("passkey", "emphasis:").values() if not r["reply_ended"]]
    assert f"only {sum(r['exact'] for r in unended)} of them after giving the key (at 1,024 tokens, 9 of 13)" in README
    primary = [json.loads(line) for line in (ROOT / "figures/longctx-smollm2/primary/records.jsonl").open()]
    first = [r for r in primary if (r["task"], r["length"], r["setting"]) == ("passkey", 2048, "baseline")]
    assert set(key) <= {r["doc_id"] for r in first} and len(first) == 100
    assert all(r["exact"] == key[r["doc_id"]] for r in first if r["doc_id"] in key)
    assert f"0.20 here is {sum(r['exact'] for r in first) / 100:.2f} over all 100 of them" in README
    logprob = {r["comparison"]: r["mean"] for r in _replies_report()["comparisons"]
               if (r["metric"], r["lengths"], r["task"]) == ("logprob", [2048], "vt")}
    share = -logprob["emphasis_placebo - baseline"] / logprob["emphasis - emphasis_placebo"]
    assert abs(share - 1 / 3) < 0.02 and f"own change of −{-logprob['emphasis_placebo - baseline']:.2f}" in README


def _assert_reply_claim(claim: str, comparison: str, task: str, metric: str, length: int) -> None:
    (row,) = [r for r in _replies_report()["comparisons"]
              if (r["comparison"], r["metric"], r["lengths"], r["task"]) == (comparison, metric, [length], task)]
    assert row["n"] == 30
    assert claim.format(_interval(row["mean"], *row["ci95"])) in README


def _reply_cell(task: str, condition: str, metric: str, length: int = 1024) -> float:
    """A condition's mean over the 30 prompts of a cell (the report keeps it per depth)."""
    rows = [r for r in _replies_report()["replies"]
            if (r["task"], r["length"], r["condition"]) == (task, length, condition)]
    n = sum(r["n"] for r in rows)
    assert n == 30
    return sum(r["n"] * r[metric] for r in rows) / n


@pytest.mark.parametrize("length", [1024, 2048])
def test_long_context_replies_table_is_that_of_their_report(length):
    """docs/longctx.md's replies tables: each condition's reply match (and share ended) per length."""
    columns = {"baseline": "baseline", "sra": "SRA", "paper_example": "paper example",
               "placebo_example": "its placebo", "emphasis": "emphasis", "emphasis_placebo": "its placebo"}
    assert f"| task | {' | '.join(columns.values())} |" in README
    for task, name in (("passkey", "passkey"), ("vt", "variable tracking")):
        cells = [f"{_reply_cell(task, c, 'reply_match', length):.2f} "
                 f"({_reply_cell(task, c, 'reply_ended', length):.2f})" for c in columns]
        assert f"| {name} | {' | '.join(cells)} |" in README
    ended = [f"{_reply_cell('passkey', c, 'reply_ended', length):.2f}" for c in ("emphasis", "baseline")]
    wording = ("{} of them end within 96 tokens against the baseline's {}" if length == 1024 else
               "replies end less often ({} against the baseline's {})")
    assert wording.format(*ended) in README
    logprob = [r for r in _replies_report()["comparisons"] if (r["comparison"], r["metric"], r["lengths"], r["task"])
               == ("emphasis_placebo - baseline", "logprob", [1024], "vt")][0]["mean"]
    assert f"(−{-logprob:.2f} nats against the baseline)" in README


def test_long_context_reply_counts_are_those_of_the_records():
    """docs/longctx.md's counts of 1,024-token replies come from the committed records."""
    records = _reply_records(1024)
    assert f"the eight declared settings ({len(records)} records)" in README
    passkey = [r for r in records if r["task"] == "passkey"]
    differ = [r for r in passkey if r["reply_match"] != float(r["exact"])]
    assert all(r["setting"].startswith("placebo:") for r in differ)
    assert f"Reply match equals exact match in {len(passkey) - len(differ)} of the {len(passkey)} records" in README
    assert "(the two others are placebo replies" in README and len(differ) == 2
    emphasis = [r for r in passkey if r["setting"].startswith("emphasis:") and not r["reply_ended"]]
    key_then_loop = sum(r["exact"] and _loops(r["reply"]) for r in emphasis)
    assert f"of the {len(emphasis)} that do not end, {key_then_loop} give the key and then loop" in README
    vt = [r for r in records if (r["task"], r["setting"]) == ("vt", "baseline")]
    lists = sum(bool(re.match(r"[:\s]*(\d+\.|-)", r["reply"])) for r in vt)
    assert lists == len(vt) and f"(all {len(vt)} under the baseline)" in README
    counts = [sum(r["reply_match"] >= share for r in vt) for share in (0.25, 0.75, 1.0)]
    assert "{} of {} name at least one of the four variables, {} at least three, and {} all four".format(
        counts[0], len(vt), *counts[1:]) in README
    cut = [r["reply"] for r in vt if not r["reply_ended"]]
    loops = sum(map(_loops, cut))
    assert f"Most ({len(cut)} of {len(vt)}) do not end within 96 tokens, and of those, {loops} loop" in README
    assert f"and the other {['no', 'one', 'two', 'three'][len(cut) - loops]} run on about the document" in README


def test_long_context_2048_token_reply_counts_are_those_of_the_records():
    """docs/longctx.md's counts of 2,048-token replies come from the committed records."""
    records = _reply_records(2048)
    passkey = [r for r in records if (r["task"], r["setting"]) == ("passkey", "baseline")]
    missed = [r["reply"] for r in passkey if not r["exact"]]
    assert all(reply.startswith(" a ") for reply in missed)  # "what a pass key is"
    cut = [r["reply"] for r in passkey if not r["reply_ended"]]
    assert (f"The {len(missed)} replies without the key all complete \"The pass key is\" with a made-up" in README
            and f"and {sum(map(_loops, cut))} of the {len(cut)} that do not end loop" in README)
    emphasis = [r["reply"] for r in records if r["task"] == "passkey" and r["setting"].startswith("emphasis:")
                and not r["reply_ended"]]
    assert sum(map(_loops, emphasis)) == len(emphasis) and f"and all {len(emphasis)} that do not end loop" in README
    vt = [r for r in records if (r["task"], r["setting"]) == ("vt", "baseline")]
    assert all(re.match(r"[:\s]*(\d+\.|-)", r["reply"]) for r in vt) and "(all 30 again)" in README
    counts = [sum(r["reply_match"] >= share for r in vt) for share in (0.25, 0.75, 1.0)]
    cut = [r["reply"] for r in vt if not r["reply_ended"]]
    assert ("again); {} of {} name at least one of the four variables, {} at least three, and {} all four; {} do "
            "not end within 96 tokens, {} of them loops").format(counts[0], len(vt), *counts[1:], len(cut),
                                                                  sum(map(_loops, cut))) in README


def test_long_context_runs_in_progress_are_counted_as_their_reports():
    """"At this writing N of its M records are in": N is what the committed report was made from."""
    pooled = json.loads((ROOT / "figures/longctx-smollm2/report.json").read_text())
    primary = (ROOT / "figures/longctx-smollm2/primary/records.jsonl").read_text().count("\n")
    assert pooled["runs"] == ["figures/longctx-smollm2/primary", "figures/longctx-smollm2/secondary"]
    assert f"At this writing {pooled['n_records'] - primary:,} of its 6,660 records are in" in README
    replies = _replies_report()["n_records"]
    assert (f"At this writing {replies:,} of its 960 records are in" if replies < 960
            else "All 960 of its records are in (the run is complete)") in README
    knockout = (ROOT / "figures/longctx-smollm2/knockout/records.jsonl").read_text().split("\n")[:-1]
    at_2048 = sum(json.loads(line)["length"] == 2048 for line in knockout)
    assert f"Its 2,048-token cells hold {at_2048} of their 180 records" in README


def _loops(text: str) -> bool:
    """A line (its list number aside) or four words in a row, three times or more."""
    lines = Counter(re.sub(r"^\s*[-\d.]+\s*", "", line).strip() for line in text.split("\n") if line.strip())
    words = text.split()
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    return max(lines.values(), default=0) >= 3 or max(grams.values(), default=0) >= 3


def test_long_context_costs_with_64_rows_are_those_of_the_bench():
    bench = json.loads((ROOT / "figures/bench-cpu/long_context_8192_rows64.json").read_text())["lengths"]["8192"]
    ratios = [f"{bench['time'][k]['ratio_median']:.2f}x"
              for k in ("chunked_probe_over_sdpa", "chunked_over_sdpa", "probe_over_chunked")]
    memory = f"{bench['memory_ratios']['chunked_probe_over_sdpa']['added']:.2f}x"
    assert f"{', '.join(ratios)}, added memory {memory}" in README


def _spread(ratio: dict) -> str:
    """A bench ratio's range over its rounds, as the docs write it: ``(min-max)``."""
    return f"({ratio['ratio_min']:.2f}-{ratio['ratio_max']:.2f})"


def test_long_context_costs_held_to_avx2_are_those_of_the_bench():
    run = json.loads((ROOT / "figures/bench-cpu/long_context_avx2.json").read_text())
    bench = run["lengths"]["8192"]
    time, memory = bench["time"], bench["memory_ratios"]["chunked_probe_over_sdpa"]
    with_probe, chunked, probe = (time[k] for k in ("chunked_probe_over_sdpa", "chunked_over_sdpa",
                                                    "probe_over_chunked"))
    assert run["cpu_capability"] == "AVX2" and bench["repeats"] == 3
    assert (f"chunked with the probe {with_probe['ratio_median']:.2f}x SDPA {_spread(with_probe)}, "
            f"chunked alone {chunked['ratio_median']:.2f}x, **the probe {probe['ratio_median']:.2f}x** "
            f"{_spread(probe)}, added memory {memory['added']:.2f}x ({memory['peak']:.2f}x peak)") in README


@pytest.mark.parametrize("length", ["2048", "4096", "8192"])
def test_long_context_budget_table_is_that_of_the_bench(length):
    """docs/longctx.md's budget table: medians and the rounds' ranges of the committed bench."""
    bench = json.loads((ROOT / "figures/bench-cpu/long_context.json").read_text())["lengths"][length]
    time, memory = bench["time"], bench["memory_ratios"]["chunked_probe_over_sdpa"]
    spread = lambda key: _spread(time[key])  # noqa: E731
    bold = "**" if length == "8192" else ""
    cells = [f"{bold}{time['chunked_probe_over_sdpa']['ratio_median']:.2f}x{bold} {spread('chunked_probe_over_sdpa')}",
             f"{time['chunked_over_sdpa']['ratio_median']:.2f}x",
             f"{bold}{time['probe_over_chunked']['ratio_median']:.2f}x{bold} {spread('probe_over_chunked')}"]
    assert f"| {int(length):,} | {' | '.join(cells)} |" in README
    assert f"{bold}{memory['added']:.2f}x{bold} ({memory['peak']:.2f}x) |" in README
    if length == "8192":  # the verdicts follow the bench's medians
        over_sdpa = time["chunked_probe_over_sdpa"]["ratio_median"]
        probe = time["probe_over_chunked"]["ratio_median"]
        verdict = {True: "met", False: "not met"}
        memory_met = max(memory["added"], memory["peak"]) <= 1.3
        time_met, probe_met = over_sdpa <= 2.5, probe <= 1.15
        assert (f"Memory at most 1.3x SDPA's, {verdict[memory_met]}: {memory['added']:.2f}x added, "
                f"{memory['peak']:.2f}x total peak") in README
        assert f"Time at most 2.5x, {verdict[time_met]}: {over_sdpa:.2f}x by the median" in README
        assert f"at most 1.15x the chunked forward: **{probe:.2f}x, {verdict[probe_met]}**" in README
        assert ("in this run: all three met" in README) == (memory_met and time_met and probe_met)
        run = json.loads((ROOT / "figures/bench-cpu/long_context.json").read_text())
        assert (f"on an {run['cpu']} (torch's CPU capability {run['cpu_capability']}) at commit "
                f"{run['commit'][:7]}," in README)
