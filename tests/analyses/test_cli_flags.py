"""Every analysis refuses a bad flag: exit code 2 and one line `SCRIPT.py: error: argument FLAG: ...`,
never a traceback, never a value silently ignored or reinterpreted."""

from __future__ import annotations

import json

import pytest

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

NAMES = ("flow", "xsum_eval", "xsum_select", "alternatives_select", "xsum_report", "xsum_experiment",
         "methods_report", "paper_scores", "attribution_agreement", "bench", "bench_sweep", "figures",
         "xsum_judge", "train_tiny")
SCRIPTS = {name: load_script(name) for name in NAMES}
flow = SCRIPTS["flow"]


def run(name: str, argv: list[str]) -> int:
    """``main(argv)``'s exit code, whether it returns it or argparse raises ``SystemExit``."""
    try:
        return SCRIPTS[name].main(argv)
    except SystemExit as stop:
        return stop.code


def assert_flag_error(capsys, name: str, argv: list[str], flag: str, *, loads: bool = False) -> str:
    """Exit 2 with one line on stderr naming ``flag`` the way argparse does; returns the line.
    ``loads``: the check needs the model, whose loading may print progress before that line."""
    assert run(name, argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and (loads or "\n" not in err), err
    line = err.splitlines()[-1]
    assert line.startswith(f"{name}.py: error: argument {flag}: "), err
    return line


@pytest.fixture()
def files(tmp_path):
    """An existing file and directory, and a path that does not exist."""
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    return {"file": str(tmp_path / "file.txt"), "dir": str(tmp_path / "dir"),
            "missing": str(tmp_path / "nope"), "out": str(tmp_path / "out")}


def test_negative_knockout_with_attribution_is_a_flag_error(tmp_path, capsys):
    """Was a traceback (band_size -1) after the model had run."""
    err = assert_flag_error(capsys, "flow", ["--model", "tiny", "--knockout", "-1", "--attribution", "--out",
                                             str(tmp_path)], "--knockout")
    assert "'-1'" in err


def test_negative_knockout_is_not_silently_off(tmp_path, capsys):
    assert_flag_error(capsys, "flow", ["--model", "tiny", "--knockout", "-1", "--transition", "none",
                                       "--regions", "2", "--out", str(tmp_path)], "--knockout")


def test_max_tokens_zero_is_not_no_limit(tmp_path, capsys):
    argv = ["--model", "tiny", "--max-tokens", "0", "--transition", "none", "--knockout", "0", "--regions", "2",
            "--out", str(tmp_path)]
    assert_flag_error(capsys, "flow", argv, "--max-tokens")


def test_knockout_band_beyond_the_models_layers(tmp_path, capsys):
    """Checked against the model once it is loaded: the tiny model has 8 layers."""
    err = assert_flag_error(capsys, "flow", ["--model", "tiny", "--knockout", "9", "--transition", "none",
                                             "--regions", "2", "--out", str(tmp_path)], "--knockout", loads=True)
    assert "8 layers" in err


def _alternatives_selection(folder, data_file, model="tiny"):
    """A development run's selection.json and manifest (temperature chosen) made for ``data_file``."""
    from at_probe.runs.runfiles import file_sha256
    from at_probe.xsum import canonical_selection, run_settings

    folder.mkdir()
    selection = {"selected": {"temperature": "temperature:tau=0.85"}, "profiles": None}
    selection["test_settings"] = run_settings(canonical_selection(selection))
    (folder / "selection.json").write_text(json.dumps(selection))
    (folder / "manifest.json").write_text(json.dumps({
        "model": model, "split": "development", "bucket": "800", "data_file": data_file.name,
        "data_sha256": file_sha256(data_file), "max_new_tokens": 50}))
    return folder / "selection.json"


def test_flow_refuses_a_selection_for_another_data_file_and_records_the_one_it_used(tmp_path, capsys):
    from at_probe.runs.runfiles import file_sha256

    data = require_shared(XSUM_DIR)
    selection = _alternatives_selection(tmp_path / "dev", data / "token_800_evaluation.json.gz")
    base = ["--model", "tiny", "--docs", "1", "--regions", "2", "--selection", str(selection)]
    other = [*base, "--xsum", str(data / "token_1900_evaluation.json.gz"), "--out", str(tmp_path / "a")]
    assert flow.main(other) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("flow.py: error:") and "data_sha256" in err and "\n" not in err
    assert not (tmp_path / "a" / "manifest.json").exists()
    assert flow.main([*base, "--model", "smollm2", "--xsum", str(data / "token_800_evaluation.json.gz"),
                      "--out", str(tmp_path / "b")]) == 2
    assert "model" in capsys.readouterr().err

    out = tmp_path / "c"
    assert flow.main([*base, "--xsum", str(data / "token_800_evaluation.json.gz"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selection"] == str(selection)
    assert manifest["selection_sha256"] == file_sha256(selection)
    assert set(json.loads((out / "corpus.json").read_text())["manifest"]["conditions"]) == {"baseline",
                                                                                           "temperature"}


@pytest.mark.parametrize("argv, flag", [
    (["--transition", "none", "--alpha", "2"], "--alpha"),
    (["--transition", "paper", "--sra-threshold-len", "300"], "--sra-threshold-len"),
    (["--no-placebo", "--seed", "3"], "--seed"),
    (["--index", "3"], "--index"),  # without --xsum: the built-in sample would run
    (["--split", "all"], "--split"),  # without --docs
])
def test_flow_refuses_a_flag_the_others_would_ignore(argv, flag, tmp_path, capsys):
    assert_flag_error(capsys, "flow", ["--model", "tiny", "--knockout", "0", "--regions", "2", *argv,
                                       "--out", str(tmp_path)], flag)


def test_flow_corpus_mode_refuses_flags_it_would_ignore(tmp_path, capsys):
    data = str(require_shared(XSUM_DIR) / "token_800_evaluation.json.gz")
    base = ["--model", "tiny", "--xsum", data, "--docs", "1", "--regions", "2", "--out", str(tmp_path)]
    assert_flag_error(capsys, "flow", [*base, "--rollout"], "--rollout")
    assert_flag_error(capsys, "flow", [*base, "--index", "2"], "--index")
    selection = _alternatives_selection(tmp_path / "dev", XSUM_DIR / "token_800_evaluation.json.gz")
    chosen = [*base, "--selection", str(selection), "--transition", "sra"]
    assert_flag_error(capsys, "flow", chosen, "--transition")


FLOW = ["--model", "tiny", "--transition", "none", "--knockout", "0", "--regions", "2", "--out", "{out}"]
BENCH = ["--model", "tiny", "--skip-memory"]
ATTRIBUTION = ["--model", "tiny", "--xsum", "{file}", "--out", "{out}"]
# (script, arguments, the flag with the bad value): counts, seeds, files, ranges; the other
# arguments keep the run cheap (the code before this fix ran it)
BAD = [
    ("flow", [*FLOW, "--regions", "0"], "--regions"),
    ("flow", [*FLOW, "--docs", "0"], "--docs"),
    ("flow", [*FLOW, "--k", "0"], "--k"),
    ("flow", [*FLOW, "--index", "-1"], "--index"),
    ("flow", [*FLOW, "--seed", "-1"], "--seed"),
    ("flow", [*FLOW, "--workers", "-1"], "--workers"),
    ("flow", [*FLOW, "--gpus-per-worker", "-1"], "--gpus-per-worker"),
    ("flow", [*FLOW, "--alpha", "nan"], "--alpha"),
    ("flow", [*FLOW, "--beta", "-0.5"], "--beta"),
    ("flow", [*FLOW, "--sra-elimi-inter", "0"], "--sra-elimi-inter"),
    ("flow", [*FLOW, "--text", "{missing}"], "--text"),
    ("flow", [*FLOW, "--selection", "{missing}"], "--selection"),
    ("flow", [*FLOW, "--out", "{file}"], "--out"),
    ("flow", [*FLOW, "--device", "nonsense"], "--device"),
    ("xsum_eval", ["--out", "{out}", "--limit", "0"], "--limit"),
    ("xsum_eval", ["--out", "{out}", "--batch-size", "0"], "--batch-size"),
    ("xsum_eval", ["--out", "{out}", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("xsum_eval", ["--out", "{out}", "--data", "{missing}"], "--data"),
    ("xsum_select", ["--out", "{out}", "--docs", "0"], "--docs"),
    ("xsum_select", ["--out", "{out}", "--batch-size", "-3"], "--batch-size"),
    ("xsum_select", ["--out", "{out}", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("alternatives_select", ["--out", "{out}", "--profile-docs", "0"], "--profile-docs"),
    ("alternatives_select", ["--out", "{out}", "--regions", "0"], "--regions"),
    ("alternatives_select", ["--out", "{out}", "--targets", "summary"], "--targets"),
    ("alternatives_select", ["--out", "{out}", "--head-ranking-from", "{missing}"], "--head-ranking-from"),
    ("alternatives_select", ["--out", "{out}", "--methods", "sink_scalng"], "--methods"),
    ("alternatives_select", ["--out", "{out}", "--methods", ","], "--methods"),
    ("alternatives_select", ["--out", "{out}", "--parts-of", "{missing}"], "--parts-of"),
    ("xsum_report", ["{dir}", "--seed", "-1"], "--seed"),
    ("xsum_report", ["{missing}"], "run"),
    ("xsum_experiment", ["{dir}", "--out", "{out}", "--seed", "-1"], "--seed"),
    ("methods_report", ["{missing}", "--out", "{out}"], "reports"),
    ("paper_scores", ["--bootstrap", "0"], "--bootstrap"),
    ("paper_scores", ["--repeats", "0"], "--repeats"),
    ("paper_scores", ["--data", "{missing}"], "--data"),
    ("attribution_agreement", [*ATTRIBUTION, "--band", "0"], "--band"),
    ("attribution_agreement", [*ATTRIBUTION, "--docs", "0"], "--docs"),
    ("attribution_agreement", [*ATTRIBUTION, "--regions", "-2"], "--regions"),
    ("bench", [*BENCH, "--repeats", "0"], "--repeats"),
    ("bench", [*BENCH, "--tokens", "0"], "--tokens"),
    ("bench", [*BENCH, "--decode-steps", "-1"], "--decode-steps"),
    ("bench", [*BENCH, "--xsum", "{missing}"], "--xsum"),
    ("bench_sweep", ["--docs", "0"], "--docs"),
    ("bench_sweep", ["--echo-units", "1"], "--echo-units"),
    ("bench_sweep", ["--workers", "1"], "--workers"),
    ("figures", ["--root", "{missing}"], "--root"),
    ("xsum_judge", ["{dir}", "--endpoint", "https://x.example/v1", "--model", "m", "--limit", "0"], "--limit"),
    ("train_tiny", ["--data", "{dir}", "--steps", "0"], "--steps"),
    ("train_tiny", ["--data", "{dir}", "--n-layers", "0"], "--n-layers"),
    ("train_tiny", ["--data", "{dir}", "--lr", "0"], "--lr"),
    ("train_tiny", ["--data", "{dir}", "--warmup", "-1"], "--warmup"),
    ("train_tiny", ["--data", "{dir}", "--vocab", "100"], "--vocab"),
]


@pytest.mark.parametrize("name, argv, flag", BAD, ids=[f"{n} {f} {a[-1]}" for n, a, f in BAD])
def test_a_bad_value_exits_2_naming_its_flag(name, argv, flag, files, capsys):
    """Refused by the flag's type, before any work (a positional is named by its name)."""
    assert_flag_error(capsys, name, [a.format(**files) for a in argv], flag)


@pytest.mark.parametrize("name, argv, flag", [
    ("train_tiny", ["--data", "{dir}", "--n-heads", "3"], "--n-heads"),  # 3 does not divide --d-model 256
    ("train_tiny", ["--data", "{dir}", "--seq-len", "8192"], "--seq-len"),  # longer than --context 4096
    ("bench", ["--model", "tiny", "--decode-only", "--generation-batch", "4"], "--generation-batch"),
    ("bench", [*BENCH, "--generation-batch", "0", "--profile", "{out}"], "--profile"),
    ("bench", ["--model", "tiny", "--attention-rows", "64", "--decode-only"], "--decode-only"),  # prefill ratios only
])
def test_inconsistent_flags_exit_2(name, argv, flag, files, capsys):
    assert_flag_error(capsys, name, [a.format(**files) for a in argv], flag)


# every command that loads a model with --model (xsum_judge's --model names the judge)
MODEL_COMMANDS = {"flow": FLOW, "xsum_eval": ["--out", "{out}"], "xsum_select": ["--out", "{out}"],
                  "alternatives_select": ["--out", "{out}"], "attribution_agreement": ATTRIBUTION,
                  "bench": BENCH, "bench_sweep": []}


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_an_unknown_model_exits_2_naming_model_with_the_choices(name, files, capsys, unreachable_hub):
    """A mistyped name, the hub unreachable: was about 25 s of hub retries, then (flow.py) a line
    without the flag or the valid names."""
    argv = [a.format(**files) for a in MODEL_COMMANDS[name] if a not in ("--model", "tiny")]
    line = assert_flag_error(capsys, name, [*argv, "--model", "smolm2"], "--model")
    assert "unknown model 'smolm2'" in line and "'tiny'" in line and "hub id" in line
    assert line.endswith("did you mean 'smollm2'?")
