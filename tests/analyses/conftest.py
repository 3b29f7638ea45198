"""The analyses are the commands of ``at_probe.cli`` (``analyses/<name>.py`` are thin wrappers)."""

from __future__ import annotations

import importlib

import pytest


def load_script(name: str):
    """The command module behind ``analyses/<name>.py``: ``at_probe.cli.<name>``."""
    return importlib.import_module(f"at_probe.cli.{name}")


@pytest.fixture(autouse=True)
def _agg_backend(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
