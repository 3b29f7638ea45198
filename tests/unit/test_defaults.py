"""One default, stated once: the classes, the command lines and the README agree."""

from __future__ import annotations

import inspect

from at_probe.interventions.calibration import estimate_position_bias
from at_probe.flow.probe import DEFAULT_REGIONS, FlowProbe
from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition
from tests.analyses.conftest import load_script
from tests.conftest import REPO

flow = load_script("flow")


def test_flow_defaults_are_the_classes():
    args = flow.parse_args(["--transition", "both"])
    conditions = flow.build_conditions(args)
    assert conditions["paper"] == PaperTransition()
    assert conditions["placebo"] == PlaceboTransition()
    assert conditions["sra"] == SRATransition()


def test_paper_defaults_are_the_released_example_setting():
    assert (PaperTransition().alpha, PaperTransition().beta, PaperTransition().intervals_per_layer) == (1.0, 0.5, 2)
    assert "decode_al_1_be_05_lay_2" in PaperTransition.__doc__


def test_every_region_count_default_is_the_probe_default():
    assert inspect.signature(FlowProbe).parameters["regions"].default == DEFAULT_REGIONS
    assert inspect.signature(estimate_position_bias).parameters["regions"].default == DEFAULT_REGIONS
    assert flow.parse_args([]).regions == DEFAULT_REGIONS
    from at_probe.cli import alternatives_select

    assert alternatives_select.parse_args(["--out", "unused"]).regions == DEFAULT_REGIONS
    source = (REPO / "at_probe" / "cli" / "attribution_agreement.py").read_text()
    assert "--regions\", type=positive_int, default=DEFAULT_REGIONS" in source.replace("\n        ", " ")


def test_readme_example_spells_the_defaults():
    """The README's example and the docs' statement of the defaults (README.md and docs/*.md)."""
    readme = "\0".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    assert "PaperTransition(alpha=1.0, beta=0.5, intervals_per_layer=2)" in readme
    assert "`PaperTransition()` is `alpha=1.0, beta=0.5, K=2`" in readme
