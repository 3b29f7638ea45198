"""Every analysis answers ``--help`` both ways: ``python analyses/<name>.py`` and ``at-probe <name>``
(issue #21); ``at-probe`` lists the commands and refuses an unknown one with exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from at_probe.cli.main import COMMANDS, main
from tests.conftest import REPO


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_at_probe_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_every_wrapper_answers_help_as_a_script():
    """All wrappers in one child process (``runpy``, as ``python analyses/<name>.py --help``)."""
    code = (
        "import runpy, sys\n"
        f"for name in {sorted(c.replace('-', '_') for c in COMMANDS)!r}:\n"
        "    sys.argv = [f'analyses/{name}.py', '--help']\n"
        "    try:\n"
        "        runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (name, e.code)\n"
        "    else:\n"
        "        raise AssertionError(f'{name}: --help did not exit')\n"
        "    print('HELPED', name)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("HELPED") == len(COMMANDS)


def test_the_installed_console_script_runs():
    script = Path(sys.executable).with_name("at-probe")
    if not script.exists() and shutil.which("at-probe") is None:
        pytest.skip("the package is not installed with its console script (`make setup` installs it)")
    out = subprocess.run([str(script if script.exists() else "at-probe"), "figures", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--root" in out.stdout


def test_no_command_lists_them_and_an_unknown_one_exits_2(capsys):
    assert main([]) == 2
    listing = capsys.readouterr().err
    assert all(name in listing for name in COMMANDS)
    assert main(["flwo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("at-probe: error: argument COMMAND: unknown command 'flwo'") and "'flow'" in err
    assert err.count("\n") == 1


def test_usage_and_errors_name_the_command_as_typed(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["xsum-report", "--seed", "-1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("at-probe xsum-report: error: argument --seed")
    with pytest.raises(SystemExit):
        main(["figures", "--help"])
    assert capsys.readouterr().out.startswith("usage: at-probe figures")



def test_errors_printed_outside_argparse_name_the_command_too(tmp_path, capsys):
    """flow.py refuses ``--attribution`` without a reference after loading the model (not in
    argparse): the message names ``flow.py`` as a script and ``at-probe flow`` through the console."""
    from at_probe.cli import flow

    text = tmp_path / "doc.txt"
    text.write_text("A short document about a council meeting on Monday. " * 5)
    argv = ["--model", "tiny", "--text", str(text), "--attribution", "--knockout", "0", "--out", str(tmp_path / "o")]
    assert flow.main(argv) == 2
    last = lambda: capsys.readouterr().err.splitlines()[-1]  # noqa: E731  (after the loading bar)
    assert last().startswith("flow.py: error: --attribution needs a reference summary")
    assert main(["flow", *argv]) == 2
    assert last().startswith("at-probe flow: error: --attribution needs a reference summary")
