"""The documentation site builds in strict mode (`make docs`): a broken link between pages, a
missing heading, a figure that is not committed or an API reference to a module that does not
exist fails the build (mkdocs.yml, ``validation``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: `make setup` installs the package's docs extra")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner, not a build warning
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    return out


def test_docs_build_strict(site):
    assert (site / "index.html").is_file()


def test_api_reference_is_generated_from_the_docstrings(site):
    flow = (site / "api" / "flow" / "index.html").read_text()
    assert 'id="at_probe.flow.probe.FlowProbe"' in flow


def test_the_figures_the_findings_show_are_published(site):
    findings = (site / "findings" / "index.html").read_text()
    assert 'src="../figures/flow/knockout.png"' in findings
    assert (site / "figures" / "flow" / "knockout.png").is_file()
    assert (site / "figures" / "index.html").is_file()  # figures/README.md: how each figure was made


def test_the_build_fetches_nothing(site):
    """No web fonts or remote assets: the site works offline (mkdocs.yml, ``theme.font: false``)."""
    page = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in page and "fonts.gstatic.com" not in page


def test_every_module_is_in_the_api_reference():
    """A new module needs its `::: at_probe.<package>.<module>` line in docs/api/<package>.md,
    or the API reference silently leaves it out."""
    missing = []
    for package in sorted(p for p in (REPO / "at_probe").iterdir() if (p / "__init__.py").is_file()):
        page = REPO / "docs" / "api" / f"{package.name}.md"
        listed = set(page.read_text().split()) if page.is_file() else set()
        missing += [f"at_probe.{package.name}.{m.stem}" for m in sorted(package.glob("*.py"))
                    if m.stem != "__init__" and f"at_probe.{package.name}.{m.stem}" not in listed]
    assert not missing, f"not in docs/api/: {missing}"
