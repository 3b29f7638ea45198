"""Golden tests: the transition arithmetic against the original implementations' outputs.

Fixtures come from ``../shared/fixtures/transition`` (see its README): a reproduction is right
when it matches every case to an absolute tolerance of 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from at_probe.interventions.transition import dispense, paper_schedule, sra_layer
from tests.conftest import FIXTURES, require_shared

ATOL = 1e-5


def _index() -> dict:
    if not (FIXTURES / "index.json").is_file():
        return {"schedules": [], "v1_cases": [], "v2_cases": []}
    return json.loads((FIXTURES / "index.json").read_text())


INDEX = _index()


def _load(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    data = np.load(require_shared(FIXTURES / case["file"]))
    return torch.from_numpy(data["pattern"]), torch.from_numpy(data["expected"])


def test_fixtures_present():
    """CI always has ../shared; a fresh clone skips the golden tests with this reason."""
    require_shared(FIXTURES / "index.json")
    assert INDEX["v1_cases"] and INDEX["v2_cases"] and INDEX["schedules"]


@pytest.mark.parametrize(
    "sched", INDEX["schedules"], ids=lambda s: f"T{s['seq_len']}-K{s['intervals_per_layer']}"
)
def test_paper_schedule_matches_original(sched):
    got = paper_schedule(sched["seq_len"], 32, sched["intervals_per_layer"])
    expected = {int(k): [tuple(s) for s in v] for k, v in sched["layers"].items()}
    assert got == expected
    interval = got[1][0][1] - got[1][0][0]
    assert interval == sched["interval"]


@pytest.mark.parametrize("case", INDEX["v1_cases"], ids=lambda c: c["file"])
def test_dispense_matches_original(case):
    pattern, expected = _load(case)
    spans = paper_schedule(case["seq_len"], case["n_layers"], case["intervals_per_layer"])[case["layer"]]
    assert spans == [tuple(s) for s in case["spans"]]
    before = pattern.clone()
    out = dispense(pattern, spans, case["alpha"], case["beta"])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert torch.equal(pattern, before), "dispense must not modify its input"
    sums = out.sum(-1)
    assert sums.min().item() == pytest.approx(case["min_row_sum_after"], abs=ATOL)
    assert sums.max().item() == pytest.approx(case["max_row_sum_after"], abs=ATOL)


@pytest.mark.parametrize("case", INDEX["v2_cases"], ids=lambda c: c["file"])
def test_sra_layer_matches_original(case):
    pattern, expected = _load(case)
    before = pattern.clone()
    out = sra_layer(pattern, case["layer"], case["n_layers"], **case["params"])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert torch.equal(pattern, before), "sra_layer must not modify its input"
    assert bool((out != pattern).any()) == case["changed"]
