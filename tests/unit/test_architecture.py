"""The package's shape (issue #21, ``docs/design.md``): imports point down the layers, no module is
too long, every old flat import path still names the moved module, every command has a wrapper."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import at_probe

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "at_probe"

LAYERS: dict[str, int] = {"runs": 0, "models": 1, "flow": 2, "interventions": 3, "xsum": 4, "cli": 5}
"""Subpackage -> layer: a module may import its own subpackage and lower layers only."""

MAX_LINES = 520  # the "about 500 lines"


def subpackage(module: str) -> str | None:
    """``at_probe.flow.probe`` -> ``flow``; None for ``at_probe`` itself and non-at_probe modules."""
    parts = module.split(".")
    return parts[1] if parts[0] == "at_probe" and len(parts) > 1 else None


def imported_modules(path: Path) -> set[str]:
    """Every at_probe module ``path`` imports, at the top or inside a function (TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from at_probe.flow import ops`` imports at_probe.flow.ops
            names.update(f"{node.module}.{a.name}" if node.module.count(".") == 1 else node.module
                         for a in node.names)
    return {n for n in names if n.startswith("at_probe")}


def layer_violations(package: Path = PACKAGE) -> list[str]:
    """``file: imports target`` for every import of a higher layer (or an unknown subpackage)."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        own = path.relative_to(package).parts[0]
        if own not in LAYERS:  # at_probe/__init__.py: the public face, may re-export anything
            continue
        for target in sorted(imported_modules(path)):
            sub = subpackage(target)
            if sub is None or (sub not in LAYERS and sub not in at_probe.MOVED):
                continue
            if sub in at_probe.MOVED or LAYERS[sub] > LAYERS[own]:
                bad.append(f"{path.relative_to(package.parent)}: imports {target}")
    return bad


def test_imports_point_down_the_layers():
    assert layer_violations() == []


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: a runs module importing the flow probe, or an old flat path, is reported."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.py").write_text("from at_probe.flow.probe import FlowProbe\nimport at_probe.loading\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "ok.py").write_text("from at_probe.runs import stats\n")
    assert [v.split(": ")[1] for v in layer_violations(tmp_path)] == [
        "imports at_probe.flow.probe", "imports at_probe.loading"]


def test_the_layer_rule_is_written_in_the_design_doc():
    design = " ".join((ROOT / "docs" / "design.md").read_text().replace("`", "").split())
    assert "runs < models < flow < interventions < xsum < cli" in design


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("old", sorted(at_probe.MOVED))
def test_every_old_import_path_is_the_moved_module(old):
    alias = importlib.import_module(f"at_probe.{old}")
    assert alias is importlib.import_module(f"at_probe.{at_probe.MOVED[old]}")
    assert getattr(at_probe, old) is alias
    assert alias.__spec__.name == f"at_probe.{at_probe.MOVED[old]}"  # the alias does not rename it


def test_every_command_has_a_wrapper_and_a_subcommand():
    from at_probe.cli.main import COMMANDS

    modules = {p.stem for p in (PACKAGE / "cli").glob("*.py")  # the commands: modules with a main()
               if p.stem != "main" and "\ndef main(" in p.read_text()}
    wrappers = {p.stem for p in (ROOT / "analyses").glob("*.py")}
    assert modules == wrappers == {c.replace("-", "_") for c in COMMANDS}
    for name in wrappers:
        assert f"from at_probe.cli.{name} import main" in (ROOT / "analyses" / f"{name}.py").read_text()
