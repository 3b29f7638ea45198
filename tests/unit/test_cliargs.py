"""at_probe.cli.args: the argparse types and the one-line error of every analysis."""

from __future__ import annotations

import argparse

import pytest

from at_probe.cli import args as cliargs


def test_counts_and_numbers():
    assert cliargs.positive_int("3") == 3 and cliargs.nonnegative_int("0") == 0
    assert cliargs.positive_float("1e-3") == 1e-3 and cliargs.nonnegative_float("0") == 0
    for parse, text in ((cliargs.positive_int, "0"), (cliargs.positive_int, "1.5"),
                        (cliargs.nonnegative_int, "-1"), (cliargs.int_at_least(2), "1"), (cliargs.positive_float, "0"),
                        (cliargs.positive_float, "inf"), (cliargs.nonnegative_float, "nan"),
                        (cliargs.nonnegative_float, "-0.1")):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
            parse(text)


def test_paths(tmp_path):
    (tmp_path / "f").write_text("x")
    assert cliargs.existing_file(str(tmp_path / "f")) == tmp_path / "f"
    assert cliargs.existing_dir(str(tmp_path)) == tmp_path
    assert cliargs.output_dir(str(tmp_path / "new" / "run")) == tmp_path / "new" / "run"
    assert cliargs.output_file(str(tmp_path / "new" / "r.json")) == tmp_path / "new" / "r.json"
    refused = [(cliargs.existing_file, tmp_path), (cliargs.existing_dir, tmp_path / "f"),
               (cliargs.output_dir, tmp_path / "f"), (cliargs.output_dir, tmp_path / "f" / "run"),
               (cliargs.output_file, tmp_path), (cliargs.output_file, tmp_path / "f" / "r.json")]
    for parse, path in refused:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(str(path))
    with pytest.raises(argparse.ArgumentTypeError, match="torch device"):
        cliargs.torch_device("gpu0")
    assert cliargs.torch_device("cuda:1") == "cuda:1"


def _parser() -> cliargs.ArgumentParser:
    p = cliargs.ArgumentParser(prog="x.py")
    p.add_argument("run")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--no-placebo", action="store_true")
    p.add_argument("--k", type=cliargs.positive_int, default=2)
    return p


def test_given_lists_the_options_on_the_command_line_whatever_their_value():
    p = _parser()
    assert p.given(["r", "--alpha", "1.0", "--no-placebo"]) == {"--alpha", "--no-placebo"}
    assert p.given(["r"]) == frozenset()
    assert p.parse_args(["r"]).alpha == 1.0, "defaults are restored"


def test_errors_are_one_line_exit_2(capsys):
    p = _parser()
    with pytest.raises(SystemExit) as stop:
        p.parse_args(["r", "--k", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "x.py: error: argument --k: must be an integer >= 1, got '0'\n"
    with pytest.raises(SystemExit):
        p.refuse(p.given(["r", "--alpha", "2"]), ("--k", "--alpha"), "not used here")
    assert capsys.readouterr().err == "x.py: error: argument --alpha: not used here\n"
    p.refuse(p.given(["r"]), ("--alpha",), "not used here")  # absent: nothing happens
    assert issubclass(cliargs.UsageError, ValueError)
