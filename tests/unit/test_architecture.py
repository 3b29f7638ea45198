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

LAYERS: dict[str, int] = {"runs": 0, "models": 1, "flow": 2, "interventions": 3, "xsum": 4, "longctx": 5, "cli": 6}
"""Subpackage -> layer: a module may import its own subpackage and lower layers only."""

MAX_LINES = 520  # the "about 500 lines"


def subpackage(module: str) -> str | None:
    """``at_probe.flow.probe`` -> ``flow``; None for ``at_probe`` itself and non-at_probe modules."""
    parts = module.split(".")
    return parts[1] if parts[0] == "at_probe" and len(parts) > 1 else None


def imported_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every at_probe module ``path`` imports, at the top or inside a function (TYPE_CHECKING too);
    relative imports resolved against ``path``'s package; ``at_probe`` itself for ``import
    at_probe`` and ``from at_probe import <name>`` (which runs the whole package's ``__init__``)."""
    here = ["at_probe", *path.relative_to(package).parts[:-1]]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # ``from ..cli import flow`` inside at_probe/runs/x.py -> at_probe.cli
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # ``from at_probe.flow import ops`` imports at_probe.flow.ops
                if base == "at_probe":
                    names.add(f"at_probe.{a.name}" if a.name in LAYERS or a.name in at_probe.MOVED
                              else "at_probe")
                else:
                    names.add(f"{base}.{a.name}" if base.count(".") == 1 else base)
    return {n for n in names if n == "at_probe" or n.startswith("at_probe.")}


def layer_violations(package: Path = PACKAGE) -> list[str]:
    """``file: imports target`` for every import of a higher layer, an old flat path, or (outside
    ``cli``) the top-level package."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        own = path.relative_to(package).parts[0]
        if own not in LAYERS:  # at_probe/__init__.py: the public face, may re-export anything
            continue
        for target in sorted(imported_modules(path, package)):
            sub = subpackage(target)
            if sub is None:
                if own != "cli":
                    bad.append(f"{path.relative_to(package.parent)}: imports {target}")
                continue
            if sub in at_probe.MOVED or (sub in LAYERS and LAYERS[sub] > LAYERS[own]):
                bad.append(f"{path.relative_to(package.parent)}: imports {target}")
    return bad


def test_imports_point_down_the_layers():
    assert layer_violations() == []


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself: upward imports in any form (absolute, relative, through the top-level
    package, inside a function) and old flat paths are reported; downward ones are not."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "bad.py").write_text(
        "from at_probe.flow.probe import FlowProbe\nimport at_probe.loading\nfrom ..cli import flow\n"
        "from at_probe import FlowProbe\ndef f():\n    import at_probe\n    from at_probe import xsum\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "ok.py").write_text("import at_probe\nfrom at_probe.runs import stats\nfrom ..xsum import x\n")
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "ok.py").write_text("from . import ops\nfrom ..models import names\n")
    assert sorted(v.split(": ")[1] for v in layer_violations(tmp_path)) == [
        "imports at_probe", "imports at_probe.cli.flow", "imports at_probe.flow.probe",
        "imports at_probe.loading", "imports at_probe.xsum"]


def test_the_layer_rule_is_written_in_the_design_doc():
    design = " ".join((ROOT / "docs" / "design.md").read_text().replace("`", "").split())
    assert "runs < models < flow < interventions < xsum < longctx < cli" in design


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
