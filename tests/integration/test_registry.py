"""Adding a method is one module plus one import line: a no-op edit defined and registered in this
file alone (no library code touched) runs through the settings grammar, ``xsum_eval.py`` on the
tiny model and ``flow.py --docs``, under its canonical name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import pytest
from torch import Tensor

from at_probe.cli import flow, xsum_eval
from at_probe.interventions import registry
from at_probe.interventions.base import AttentionEdit, SequenceView
from at_probe.interventions.registry import PLACEBO_SEED, Key, Method, Placebo
from at_probe.xsum import SettingError, parse_settings, placebo_draws, placebo_of, setting_roles
from tests.conftest import XSUM_DIR, require_shared

CALLS: list[tuple[str, int]] = []
"""(``"edit"`` or ``"placebo"``, layer) per sequence the no-op edited: proof that its hooks ran."""


@dataclass(frozen=True)
class NoOpEdit(AttentionEdit):
    """Leaves the last layer's pre-softmax scores unchanged (records each call in ``CALLS``).

    Args:
        scale: the no-op's one parameter; must be 1.
        placebo_seed: if set, the placebo (also a no-op).
    """

    scale: float = 1.0
    placebo_seed: int | None = None

    stage: ClassVar[str] = "scores"

    def __post_init__(self) -> None:
        if self.scale != 1:
            raise ValueError(f"scale must be 1 (a no-op), got {self.scale!r}")

    def _layer_heads(self, n_layers: int, n_heads: int) -> dict[int, Tensor | None]:
        return {n_layers - 1: None}

    def _edit_(self, seq: Tensor, layer: int, heads: Tensor | None, view: SequenceView) -> tuple[int, None]:
        CALLS.append(("edit" if self.placebo_seed is None else "placebo", layer))
        return seq.shape[-2], None


# What the new method's module would hold at its bottom (its own import line would fill the registry).
NOOP = Method("noop", NoOpEdit, {"scale": Key(float)}, summary="a no-op (tests only)",
              placebo=Placebo("noop_placebo"))
NOOP_PLACEBO = Method("noop_placebo", NoOpEdit,
                      {"scale": Key(float), "seed": Key(int, field="placebo_seed", default=PLACEBO_SEED)})


@contextmanager
def registered() -> Iterator[None]:
    """The no-op and its placebo registered, and unregistered on exit (whatever happened)."""
    done = []
    try:
        for entry in (NOOP, NOOP_PLACEBO):
            done.append(registry.register(entry).kind)
        yield
    finally:
        for kind in done:
            registry.unregister(kind)


@pytest.fixture()
def noop() -> Iterator[None]:
    CALLS.clear()
    with registered():
        yield


def test_the_grammar_placebo_and_roles_read_the_registry(noop):
    settings = parse_settings("baseline; noop: ;noop_placebo:seed=2,scale=1")
    assert list(settings) == ["baseline", "noop:scale=1.0", "noop_placebo:scale=1.0,seed=2"]
    assert settings["noop:scale=1.0"] == NoOpEdit()
    assert settings["noop_placebo:scale=1.0,seed=2"] == NoOpEdit(placebo_seed=2)
    assert placebo_of("noop:scale=1", seed=3) == "noop_placebo:scale=1.0,seed=3"
    roles = setting_roles({"selected": {"noop": "noop:scale=1.0"}, "profiles": None})
    assert roles == {"baseline": "baseline", "noop_selected": "noop:scale=1.0",
                     "noop_placebo": "noop_placebo:scale=1.0,seed=0"}
    assert placebo_draws(roles, 2) == {"noop_placebo": ["noop_placebo:scale=1.0,seed=0",
                                                        "noop_placebo:scale=1.0,seed=1"]}
    with pytest.raises(SettingError, match="noop takes scale; did you mean 'scale'"):
        parse_settings("noop:scal=1")
    with pytest.raises(SettingError, match="invalid 'noop:scale=2': scale must be 1"):
        parse_settings("noop:scale=2")


def test_teardown_unregisters():
    with registered():
        assert {"noop", "noop_placebo"} <= set(registry.kinds())
    assert "noop" not in registry.kinds() and "noop_placebo" not in registry.kinds()
    with pytest.raises(SettingError, match="unknown setting kind 'noop'"):
        parse_settings("noop:")


def test_xsum_eval_runs_the_new_method_under_its_canonical_name(noop, tmp_path):
    require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    out = tmp_path / "run"
    assert xsum_eval.main(["--model", "tiny", "--data", str(XSUM_DIR), "--bucket", "800", "--limit", "2",
                           "--batch-size", "1", "--max-new-tokens", "4", "--settings",
                           "baseline;noop:;noop_placebo:seed=1", "--out", str(out)]) == 0
    names = ["baseline", "noop:scale=1.0", "noop_placebo:scale=1.0,seed=1"]
    assert json.loads((out / "manifest.json").read_text())["settings"] == names
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted(r["setting"] for r in records) == sorted(names * 2)
    by = {(r["doc_id"], r["setting"]): r for r in records}
    for doc in {r["doc_id"] for r in records}:  # a no-op: the baseline's summary and NLL
        for name in names[1:]:
            assert by[(doc, name)]["output"] == by[(doc, "baseline")]["output"]
            nll = by[(doc, "baseline")]["summary_nll"]
            assert by[(doc, name)]["summary_nll"] == pytest.approx(nll, abs=1e-5)
    assert {kind for kind, _ in CALLS} == {"edit", "placebo"}


def test_flow_docs_runs_the_new_method_as_a_condition(noop, tmp_path, capsys):
    data = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    out = tmp_path / "flow"
    assert flow.main(["--model", "tiny", "--xsum", str(data), "--docs", "1", "--regions", "4",
                      "--settings", "noop:;noop_placebo:", "--out", str(out)]) == 0
    names = ["baseline", "noop:scale=1.0", "noop_placebo:scale=1.0,seed=0"]
    record = json.loads((out / "corpus.json").read_text())
    assert list(record["manifest"]["conditions"]) == names
    summary = pd.read_csv(out / "corpus_summary.csv")
    diff = summary[(summary.kind == "difference") & (summary.measure == "final_token_profile")]
    assert set(diff.condition) == {f"{n} - baseline" for n in names[1:]}
    assert diff["mean"].abs().max() < 1e-6  # a no-op moves no attention
    assert {kind for kind, _ in CALLS} == {"edit", "placebo"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--settings", "noop:scale=2"], "argument --settings: invalid 'noop:scale=2': scale must be 1"),
        (["--settings", "noop:;noop:scale=1"], "argument --settings: setting 'noop:scale=1' appears twice"),
        (["--settings", "emphasis:top=1"],
         "argument --settings: invalid 'emphasis:top=1': emphasis settings need the development profile"),
        (["--settings", "temperature:tau=2,layers=90"],
         "argument --settings: 'temperature:layers=90-90,tau=2.0' does not fit the model"),
        (["--settings", "noop:", "--transition", "sra"],
         "argument --transition: sets up a transition; with --settings those settings run instead"),
        (["--settings", "noop:", "--selection", __file__],
         "argument --selection: not allowed with argument --settings"),
    ],
)
def test_flow_refuses_bad_settings_naming_the_flag(noop, tmp_path, capsys, argv, message):
    try:
        code = flow.main(["--model", "tiny", "--knockout", "0", *argv, "--out", str(tmp_path / "o")])
    except SystemExit as stop:  # refused while parsing
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"flow.py: error: {message}") and "\n" not in err, err
    assert not (tmp_path / "o").exists() and not CALLS
