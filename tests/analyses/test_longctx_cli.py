"""``longctx.py`` and ``longctx_report.py`` end to end on the tiny model: records, resuming, a
run gaining settings, ``--check`` against the committed records, and flags refused by name."""

from __future__ import annotations

import json

import pytest

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

longctx = load_script("longctx")
longctx_report = load_script("longctx_report")


def _args(out, settings="baseline;temperature:tau=1.5,layers=4-7", *extra):
    return ["--model", "tiny", "--data", str(require_shared(XSUM_DIR)), "--tasks", "passkey,vt",
            "--lengths", "512", "--prompts", "2", "--settings", settings, "--attention-rows", "128",
            "--out", str(out), *extra]


def _records(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def test_a_run_writes_paired_records_resumes_and_grows(tmp_path, capsys):
    out = tmp_path / "run"
    assert longctx.main(_args(out)) == 0
    records = _records(out)
    assert len(records) == 2 * 2 * 2  # tasks x prompts x settings
    assert {r["doc_id"] for r in records} == {"passkey-512-0.1-000", "passkey-512-0.3-001", "vt-512-0.1-000",
                                              "vt-512-0.3-001"}
    first = records[0]
    assert {"exact", "logprob", "tokens_right", "greedy", "needle_mass", "needle_flow", "answer", "depth"} <= set(first)
    assert len(first["needle_mass"]) == 8 and first["prompt_tokens"] + first["answer_tokens"] <= 512
    assert [r["setting"] for r in records[:2]] == ["baseline", "temperature:layers=4-7,tau=1.5"]  # prompt by prompt
    capsys.readouterr()
    assert longctx.main(_args(out)) == 0
    assert "0 to go" in capsys.readouterr().out and len(_records(out)) == 8
    assert longctx.main(_args(out, "baseline;temperature:tau=1.5,layers=4-7;paper:alpha=1,beta=0.5,k=2")) == 0
    assert len(_records(out)) == 12  # the new setting only
    assert json.loads((out / "manifest.json").read_text())["settings"][-1] == "paper:alpha=1.0,beta=0.5,k=2"
    assert longctx.main(_args(out, "baseline", "--prompts", "3")) == 2  # another grid: refused
    assert "different configuration (prompt_sha256, prompts," in capsys.readouterr().err


def test_check_recomputes_the_committed_records(tmp_path, capsys):
    out = tmp_path / "run"
    assert longctx.main(_args(out)) == 0
    capsys.readouterr()
    assert longctx.main(_args(out, "temperature:tau=1.5,layers=4-7;baseline", "--check", "2")) == 0
    assert capsys.readouterr().out.count("same") == 4
    lines = (out / "records.jsonl").read_text().splitlines()
    tampered = json.loads(lines[1])
    tampered["logprob"] += 0.5
    (out / "records.jsonl").write_text("\n".join([lines[0], json.dumps(tampered), *lines[2:]]) + "\n")
    assert longctx.main(_args(out, "baseline;temperature:tau=1.5,layers=4-7", "--check", "1")) == 1
    assert "differs in logprob" in capsys.readouterr().out
    # a small needle share moved by 2e-5 (a tenth of it or more), and a field the rerun lacks
    untouched = json.loads(lines[1])
    mass = untouched["needle_mass"]
    smallest = min(range(len(mass)), key=lambda i: abs(mass[i]))
    assert abs(mass[smallest]) < 2e-4
    mass[smallest] += 2e-5
    (out / "records.jsonl").write_text("\n".join([lines[0], json.dumps(untouched | {"note": 1}), *lines[2:]]) + "\n")
    assert longctx.main(_args(out, "baseline;temperature:tau=1.5,layers=4-7", "--check", "1")) == 1
    assert "differs in needle_mass, note" in capsys.readouterr().out
    for flag, value in (("--settings", "baseline"), ("--attention-rows", "64"), ("--reply-tokens", "4")):
        args = _args(out, "baseline;temperature:tau=1.5,layers=4-7", "--check", "1")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        assert longctx.main(args) == 2  # not the run's own command
        err = capsys.readouterr().err
        assert f"argument {flag}:" in err and "--check reruns the run's own command" in err


def test_paired_with_skips_what_another_run_holds(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert longctx.main(_args(first, "baseline")) == 0
    capsys.readouterr()
    assert longctx.main(_args(second, "baseline;temperature:tau=1.5,layers=4-7", "--paired-with", str(first))) == 0
    assert "4 in --paired-with runs, 4 to go" in capsys.readouterr().out
    assert {r["setting"] for r in _records(second)} == {"temperature:layers=4-7,tau=1.5"}
    assert len(_records(second)) == 4
    assert json.loads((second / "manifest.json").read_text())["paired_with"] == [str(first)]
    assert longctx.main(_args(second, "baseline;temperature:tau=1.5,layers=4-7")) == 2  # would score them twice
    assert "argument --paired-with" in capsys.readouterr().err
    spelled = str(first / ".." / "first")
    assert longctx.main(_args(second, "baseline;temperature:tau=1.5,layers=4-7", "--paired-with", spelled)) == 0
    assert "0 to go" in capsys.readouterr().out
    # prompts that came out otherwise (another tasks.py, tokenizer or text repair) are refused
    for run, flag in ((first, "argument --paired-with"), (second, "different configuration (prompt_sha256")):
        text = (run / "manifest.json").read_text()
        manifest = json.loads(text)
        assert sorted(manifest["prompt_sha256"]) == sorted(r["doc_id"] for r in _records(first))
        manifest["prompt_sha256"]["vt-512-0.3-001"] = "0" * 16
        (run / "manifest.json").write_text(json.dumps(manifest))
        assert longctx.main(_args(second, "baseline;temperature:tau=1.5,layers=4-7", "--paired-with", str(first))) == 2
        assert flag in capsys.readouterr().err
        (run / "manifest.json").write_text(text)


def test_knockout_estimates_are_recorded_and_pair_only_with_runs_that_have_them(tmp_path, capsys):
    """``--knockout-estimate`` adds ``needle_knockout`` per layer (the manifest says so) and
    leaves the other scores as they were; a run with estimates refuses to pair with one whose
    records lack them, and with one made in another dtype."""
    plain, knock = tmp_path / "plain", tmp_path / "knock"
    assert longctx.main(_args(plain, "baseline")) == 0
    assert longctx.main(_args(knock, "baseline", "--knockout-estimate")) == 0
    assert json.loads((knock / "manifest.json").read_text())["knockout_estimate"] is True
    ours = _records(knock)
    assert all(len(r["needle_knockout"]) == 8 and isinstance(r["needle_knockout_exact"], float) for r in ours)
    causal = ("needle_knockout", "needle_knockout_exact", "wall_seconds")
    strip = [{k: v for k, v in r.items() if k not in causal} for r in ours]
    assert strip == [{k: v for k, v in r.items() if k != "wall_seconds"} for r in _records(plain)]
    for run, flag in ((knock, []), (plain, ["--knockout-estimate"])):  # resumed with the flag flipped
        assert longctx.main(_args(run, "baseline", *flag)) == 2
        assert "knockout_estimate" in capsys.readouterr().err
    capsys.readouterr()
    assert longctx_report.main([str(knock), "--out", str(tmp_path / "report")]) == 0
    assert "knockout passkey 512 baseline: first-order estimate" in capsys.readouterr().out
    table = json.loads((tmp_path / "report" / "report.json").read_text())["needle_knockout"]
    assert len(table) == 2 * 8 and (tmp_path / "report" / "longctx_knockout.png").is_file()  # tasks x layers
    capsys.readouterr()
    args = _args(tmp_path / "third", "baseline;temperature:tau=1.5,layers=4-7", "--knockout-estimate")
    assert longctx.main([*args, "--paired-with", str(plain)]) == 2
    assert "--paired-with" in capsys.readouterr().err and not (tmp_path / "third" / "records.jsonl").exists()
    manifest = json.loads((knock / "manifest.json").read_text())
    (knock / "manifest.json").write_text(json.dumps({**manifest, "dtype": "bfloat16"}))
    assert longctx.main([*args, "--paired-with", str(knock)]) == 2
    assert "ran in bfloat16" in capsys.readouterr().err
    older = {**manifest["versions"], "torch": "2.0.0"}  # the rule of a resumed run
    (knock / "manifest.json").write_text(json.dumps({**manifest, "versions": older}))
    assert longctx.main([*args, "--paired-with", str(knock)]) == 2
    assert f"ran with {older}" in capsys.readouterr().err


def test_replies_are_recorded_reported_and_pair_only_with_runs_that_have_them(tmp_path, capsys):
    """``--reply-tokens N`` adds a generated ``reply`` (at most N tokens) and its ``reply_match``
    to each record (the manifest says so), leaves the other scores as they were, enters the
    report's comparisons and ``replies`` table, and refuses a run without replies of N tokens
    to resume or pair with it."""
    plain, replied = tmp_path / "plain", tmp_path / "replied"
    assert longctx.main(_args(plain, "baseline")) == 0
    assert longctx.main(_args(replied, "baseline", "--reply-tokens", "6")) == 0
    assert json.loads((replied / "manifest.json").read_text())["reply_tokens"] == 6
    ours = _records(replied)
    assert all(isinstance(r["reply"], str) and r["reply_match"] in (0.0, 0.25, 0.5, 0.75, 1.0)
               and r["reply_length"] <= 6 and r["reply_ended"] == (r["reply_length"] < 6) for r in ours)
    replied_keys = ("reply", "reply_length", "reply_ended", "reply_match", "wall_seconds")
    strip = [{k: v for k, v in r.items() if k not in replied_keys} for r in ours]
    assert strip == [{k: v for k, v in r.items() if k != "wall_seconds"} for r in _records(plain)]
    for run, flag in ((replied, []), (replied, ["--reply-tokens", "7"]), (plain, ["--reply-tokens", "6"])):
        assert longctx.main(_args(run, "baseline", *flag)) == 2
        assert "reply_tokens" in capsys.readouterr().err
    args = _args(tmp_path / "third", "baseline;temperature:tau=1.5,layers=4-7", "--reply-tokens", "6")
    assert longctx.main([*args, "--paired-with", str(plain)]) == 2
    assert "argument --paired-with" in capsys.readouterr().err
    assert longctx.main([*args, "--paired-with", str(replied)]) == 0
    capsys.readouterr()
    assert longctx_report.main([str(replied), str(tmp_path / "third"), "--out", str(tmp_path / "report")]) == 0
    assert "replies vt 512 baseline: match" in capsys.readouterr().out
    result = json.loads((tmp_path / "report" / "report.json").read_text())
    assert {r["condition"] for r in result["replies"]} == {"baseline"}  # the temperature has no role here
    assert (tmp_path / "report" / "longctx_replies.png").is_file()
    assert longctx.main(_args(tmp_path / "long", "baseline", "--lengths", "4096", "--reply-tokens", "1")) == 2
    assert capsys.readouterr().err.count("--reply-tokens") == 1


@pytest.mark.parametrize("flag,value,message", [
    ("--tasks", "passkey,nope", "--tasks"), ("--lengths", "512,x", "--lengths"), ("--depths", "0.5,1.5", "--depths"),
    ("--settings", "paper:alpha=-1", "--settings: invalid"),
    ("--settings", "temperature:tau=1.5,layers=4-20", "argument --settings: "),  # the tiny model has 8 layers
    ("--prompts", "0", "--prompts"), ("--attention-rows", "0", "--attention-rows"),
    ("--paired-with", ".", "--paired-with"),  # a directory without records.jsonl
    ("--lengths", "100", "--lengths"),  # too short for a prompt
    ("--lengths", "512,5000", "--lengths"),  # past the tiny model's 4,096-token context
    ("--check", "1", "--check"),  # --out holds no run
    ("--profiles", "{not json", "--profiles"), ("--profiles", "[1, 2]", "--profiles"),
    ("--data", "EMPTY", "--data"),  # a directory without the release
])
def test_bad_flags_exit_2_naming_them(tmp_path, capsys, flag, value, message):
    if flag == "--profiles":  # the file's text
        (tmp_path / "selection.json").write_text(value)
        value = str(tmp_path / "selection.json")
    elif value == "EMPTY":
        value = str(tmp_path)
    args = _args(tmp_path / "run")
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    try:
        code = longctx.main(args)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "records.jsonl").exists()


def test_the_report_answers_the_declared_comparisons(tmp_path, capsys):
    from at_probe.longctx.conditions import ROLES

    out = tmp_path / "run"
    settings = ";".join(["baseline", *ROLES["sra"], *ROLES["paper_example"], *ROLES["placebo_example"]])
    assert longctx.main(_args(out, settings, "--tasks", "passkey", "--lengths", "1024")) == 0
    capsys.readouterr()
    assert longctx_report.main([str(out), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert "primary sra - baseline" in printed and "incomplete run" in printed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["comparison"] for r in report["primary"]] == ["sra - baseline", "paper_example - placebo_example"]
    for name in ("longctx_accuracy", "longctx_needle", "longctx_paired"):
        assert (tmp_path / "report" / f"{name}.png").is_file() and (tmp_path / "report" / f"{name}.csv").is_file()
    with pytest.raises(SystemExit) as exit_:
        longctx_report.main([str(tmp_path / "nothing-here")])
    assert exit_.value.code == 2 and "argument runs" in capsys.readouterr().err
    assert longctx_report.main([str(tmp_path / "report")]) == 2  # a directory without records
    assert "no records.jsonl" in capsys.readouterr().err


def test_act_and_ms_poe_score_the_same_in_blocks_and_whole(tmp_path):
    """The peers whose edit of a row depends on later rows (ACT's hidden sinks, Ms-PoE's head
    ranking) give the bench the same records over blocks of 128 query rows as in one block."""
    settings = "sink_calibration:threshold=0.03;multiscale_positions:low=1.5,high=3"
    blocks, whole = tmp_path / "blocks", tmp_path / "whole"
    assert longctx.main(_args(blocks, settings)) == 0
    assert longctx.main([*_args(whole, settings)[:-2], "--attention-rows", "1024", "--out", str(whole)]) == 0
    ours, theirs = _records(blocks), _records(whole)
    assert [(r["doc_id"], r["setting"], r["exact"], r["greedy"]) for r in ours] == \
        [(r["doc_id"], r["setting"], r["exact"], r["greedy"]) for r in theirs]
    assert [r["logprob"] for r in ours] == pytest.approx([r["logprob"] for r in theirs], abs=1e-5)
