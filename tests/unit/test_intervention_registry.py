"""The registry of intervention methods (``at_probe.interventions.registry``): lookups, refusals,
placebo twins, and every built-in kind's canonical names, pinned as they were before the registry.

``CANONICAL``, ``TWINS``, ``ROLES`` and ``GRID_SHA256`` were computed from the settings code
before the registry replaced its tables (``at_probe.xsum.settings`` at commit c038579):
committed runs and selection files store these names, so none may change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from at_probe.interventions import registry
from at_probe.interventions.calibration import PositionBias
from at_probe.interventions.profiling import rank_heads
from at_probe.interventions.registry import Key, Method, Placebo
from at_probe.runs.choices import UnknownChoiceError
from at_probe.xsum import (
    ALTERNATIVES,
    ALTERNATIVES_GRID,
    PAPER_GRID,
    PLACEBO_ROLES,
    SRA_CANDIDATES,
    SettingError,
    parse_setting,
    parse_settings,
    placebo_draws,
    placebo_of,
    setting_roles,
)

PROFILES = {
    "position_bias": PositionBias(((0.5, 1.5),) * 4, 2).to_json(),
    "head_ranking": {t: rank_heads({(l, h): 0.01 * (l * 5 + h) * (1 if t == "document" else -1)
                                    for l in range(4) for h in range(5)})
                     for t in ("document", "instruction")},
    "sink_head_ranking": {name: rank_heads({(l, h): sign * 0.01 * (l * 5 + h) for l in range(4) for h in range(5)})
                          for name, sign in (("scale_down", 1), ("scale_up", -1), ("calibration", 1))},
}

_SRA = "elimi_factor_inter=0.5,elimi_factor_outer=0.3,strengthen_factor_inter=4.0,strengthen_factor_outer="
CANONICAL = {  # setting string -> its canonical name before the registry
    "paper:": "paper:alpha=1.0,beta=0.5,k=2",
    "paper:alpha=1": "paper:alpha=1.0,beta=0.5,k=2",
    "paper:k=3,alpha=1,beta=0.3": "paper:alpha=1.0,beta=0.3,k=3",
    "paper:alpha=1.5,beta=1.5,k=4": "paper:alpha=1.5,beta=1.5,k=4",
    "paper:beta=0,alpha=2e-1": "paper:alpha=0.2,beta=0.0,k=2",
    "placebo:": "placebo:alpha=1.0,beta=0.5,k=2,seed=0",
    "placebo:alpha=1,beta=0.5,k=2": "placebo:alpha=1.0,beta=0.5,k=2,seed=0",
    "placebo:seed=7,k=1": "placebo:alpha=1.0,beta=0.5,k=1,seed=7",
    "placebo:alpha=0.5,beta=0.1,k=1,seed=3": "placebo:alpha=0.5,beta=0.1,k=1,seed=3",
    "sra:": f"sra:begin_length=100,{_SRA}4.0,threshold_len=200",
    "sra:threshold_len=64": f"sra:begin_length=100,{_SRA}4.0,threshold_len=64",
    "sra:begin_length=5,threshold_len=50,elimi_factor_inter=0.5,elimi_factor_outer=0.5,"
    "strengthen_factor_inter=5,strengthen_factor_outer=5":
        "sra:begin_length=5,elimi_factor_inter=0.5,elimi_factor_outer=0.5,strengthen_factor_inter=5.0,"
        "strengthen_factor_outer=5.0,threshold_len=50",
    "sra:dyna_div=3": f"sra:begin_length=100,dyna_div=3,{_SRA}4.0,threshold_len=200",
    "sra:strengthen_factor_outer=2.5, begin_length=0": f"sra:begin_length=0,{_SRA}2.5,threshold_len=200",
    "paper:parts=prune": "paper:alpha=1.0,beta=0.5,k=2,parts=prune",
    "paper:parts=move+sink,beta=0.3": "paper:alpha=1.0,beta=0.3,k=2,parts=sink+move",
    "paper:parts=sink+prune+move": "paper:alpha=1.0,beta=0.5,k=2",
    "placebo:parts=move": "placebo:alpha=1.0,beta=0.5,k=2,parts=move,seed=0",
    "sink_scaling:rate=2": "sink_scaling:rate=2.0",
    "sink_scaling:rate=0.5,layers=2-5": "sink_scaling:layers=2-5,rate=0.5",
    "sink_scaling_placebo:rate=2": "sink_scaling_placebo:rate=2.0,seed=0",
    "sink_scaling:rate=0.5,top=4": "sink_scaling:rate=0.5,top=4",
    "sink_scaling_placebo:top=16,rate=2": "sink_scaling_placebo:rate=2.0,seed=0,top=16",
    "sink_calibration:top=4": "sink_calibration:beta=0.4,threshold=0.1,top=4",
    "sink_calibration:": "sink_calibration:beta=0.4,threshold=0.1",
    "sink_calibration:layers=2-27,beta=0.3": "sink_calibration:beta=0.3,layers=2-27,threshold=0.1",
    "sink_calibration_placebo:seed=2": "sink_calibration_placebo:beta=0.4,seed=2,threshold=0.1",
    "adaptive_temperature:": "adaptive_temperature:",
    "multiscale_positions:": "multiscale_positions:high=1.8,low=1.2",
    "multiscale_positions:low=1.5,layers=2-29": "multiscale_positions:high=1.8,layers=2-29,low=1.5",
    "multiscale_positions_placebo:seed=3": "multiscale_positions_placebo:high=1.8,low=1.2,seed=3",
    "adaptive_temperature:layers=15-29": "adaptive_temperature:layers=15-29",
    "temperature:tau=0.8": "temperature:tau=0.8",
    "temperature:tau=1": "temperature:tau=1.0",
    "temperature:tau=0.8,layers=2-3": "temperature:layers=2-3,tau=0.8",
    "temperature:layers=2,tau=1.3": "temperature:layers=2-2,tau=1.3",
    "temperature:tau=1e-2,layers=0-3": "temperature:layers=0-3,tau=0.01",
    "calibration:": "calibration:strength=1.0",
    "calibration:strength=0.5": "calibration:strength=0.5",
    "calibration:strength=1,layers=2-3": "calibration:layers=2-3,strength=1.0",
    "calibration:layers=3,strength=0": "calibration:layers=3-3,strength=0.0",
    "calibration_placebo:": "calibration_placebo:seed=0,strength=1.0",
    "calibration_placebo:seed=1": "calibration_placebo:seed=1,strength=1.0",
    "calibration_placebo:strength=0.25,layers=1-2,seed=4":
        "calibration_placebo:layers=1-2,seed=4,strength=0.25",
    "emphasis:top=2": "emphasis:alpha=0.01,target=document,top=2",
    "emphasis:top=1,target=instruction": "emphasis:alpha=0.01,target=instruction,top=1",
    "emphasis:alpha=0.5,top=3,target=document": "emphasis:alpha=0.5,target=document,top=3",
    "emphasis:top=4,alpha=1": "emphasis:alpha=1.0,target=document,top=4",
    "emphasis_placebo:top=1": "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=1",
    "emphasis_placebo:top=1,placebo=span":
        "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=1",
    "emphasis_placebo:top=2,target=instruction":
        "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=instruction,top=2",
    "emphasis_placebo:top=2,target=instruction,placebo=heads,seed=5":
        "emphasis_placebo:alpha=0.01,placebo=heads,seed=5,target=instruction,top=2",
    "emphasis_placebo:alpha=0.1,top=3,seed=2":
        "emphasis_placebo:alpha=0.1,placebo=heads,seed=2,target=document,top=3",
}

TWINS = {  # (setting, seed, emphasis_placebo) -> placebo_of before the registry
    ("paper:", 0, None): "placebo:alpha=1.0,beta=0.5,k=2,seed=0",
    ("paper:k=3,alpha=1,beta=0.3", 4, None): "placebo:alpha=1.0,beta=0.3,k=3,seed=4",
    ("calibration:strength=0.5", 0, None): "calibration_placebo:seed=0,strength=0.5",
    ("calibration:layers=1-3", 4, None): "calibration_placebo:layers=1-3,seed=4,strength=1.0",
    ("emphasis:top=2", 0, None): "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=2",
    ("emphasis:top=2", 4, None): "emphasis_placebo:alpha=0.01,placebo=heads,seed=4,target=document,top=2",
    ("emphasis:top=2", 0, "span"): "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=2",
    ("emphasis:top=1,target=instruction", 0, None):
        "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=instruction,top=1",
    ("emphasis:top=1,target=instruction", 0, "heads"):
        "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=instruction,top=1",
    ("paper:parts=sink+move", 2, None): "placebo:alpha=1.0,beta=0.5,k=2,parts=sink+move,seed=2",
    ("sink_calibration:top=4", 0, None): "sink_calibration_placebo:beta=0.4,seed=0,threshold=0.1,top=4",
}

ROLES = {  # setting_roles of an alternatives' selection before the registry
    "baseline": "baseline",
    "emphasis_selected": "emphasis:alpha=0.01,target=instruction,top=2",
    "emphasis_placebo": "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=instruction,top=2",
    "emphasis_span_placebo": "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=instruction,top=2",
    "calibration_selected": "calibration:strength=0.5",
    "calibration_placebo": "calibration_placebo:seed=0,strength=0.5",
    "temperature_selected": "temperature:tau=0.85",
}

GRID_SHA256 = "9b07cb9beb035eb5462bef4f51144dde27906fb07779e0f0ad4a5f2773ed1a60"
"""sha256 of the 91 canonical names of PAPER_GRID, SRA_CANDIDATES and ALTERNATIVES_GRID's first
three methods (emphasis, calibration, temperature), one a line."""
PEERS_GRID_SHA256 = "e4e748bef1765b8eaf2f842e12bbe9b2c803519dff64f0f61252f1bf396bfddb"
"""sha256 of the 16 canonical names of the sink and position peers' grid (pinned when it was
added: the committed ``peers-dev-*`` runs store them)."""


@pytest.mark.parametrize("setting", CANONICAL)
def test_canonical_names_are_unchanged(setting):
    assert parse_setting(setting, PROFILES)[0] == CANONICAL[setting]


def test_every_registered_kind_has_pinned_names():
    """A new built-in kind must pin its names here too (a test's own method is unregistered)."""
    assert {s.partition(":")[0] for s in CANONICAL} == set(registry.kinds())


def test_the_development_grids_keep_their_names():
    first = ("emphasis", "calibration", "temperature")
    grid = [*PAPER_GRID, *SRA_CANDIDATES, *(s for m in first for s in ALTERNATIVES_GRID[m])]
    names = list(parse_settings(";".join(grid), PROFILES))
    assert len(names) == 91 and hashlib.sha256("\n".join(names).encode()).hexdigest() == GRID_SHA256
    peers = [s for m, g in ALTERNATIVES_GRID.items() if m not in first for s in g]
    names = list(parse_settings(";".join(peers), PROFILES))
    assert len(names) == 16 and hashlib.sha256("\n".join(names).encode()).hexdigest() == PEERS_GRID_SHA256


@pytest.mark.parametrize("case", TWINS)
def test_placebo_twins_are_unchanged(case):
    setting, seed, variant = case
    assert placebo_of(setting, seed=seed, profiles=PROFILES, emphasis_placebo=variant) == TWINS[case]


def test_roles_and_placebo_draws_are_unchanged():
    selected = {"emphasis": ROLES["emphasis_selected"], "calibration": "calibration:strength=0.5",
                "temperature": "temperature:tau=0.85"}
    selection = {"selected": selected, "profiles": PROFILES}
    assert setting_roles(selection) == ROLES
    draws = placebo_draws(ROLES, 3, PROFILES)
    assert set(draws) == {"emphasis_placebo", "emphasis_span_placebo", "calibration_placebo"}
    assert draws["calibration_placebo"] == [f"calibration_placebo:seed={s},strength=0.5" for s in range(3)]
    assert PLACEBO_ROLES == {"placebo_example", "placebo_selected", "emphasis_placebo",
                             "emphasis_span_placebo", "calibration_placebo", "sink_scaling_placebo",
                             "sink_calibration_placebo", "multiscale_positions_placebo"}
    assert ALTERNATIVES == ("emphasis", "calibration", "temperature", "sink_scaling", "sink_calibration",
                            "adaptive_temperature", "multiscale_positions")


def test_a_transition_part_without_the_move_has_no_placebo():
    from at_probe.xsum.settings import placebo_twins

    for parts in ("prune", "sink", "prune+sink"):
        assert placebo_twins(f"paper:parts={parts}") == {}
        with pytest.raises(SettingError, match="is the edit itself"):
            placebo_of(f"paper:parts={parts}")
    assert placebo_twins("paper:parts=prune+move") == {"placebo": "placebo:alpha=1.0,beta=0.5,k=2,parts=prune+move,seed=0"}
    selection = {"selected": {"paper_sink": "paper:parts=sink", "paper_move": "paper:parts=move"}}
    assert set(setting_roles(selection)) == {"baseline", "paper_sink_selected", "paper_move_selected",
                                             "paper_move_placebo"}


def test_a_sink_edit_takes_its_heads_from_the_ranking_of_its_direction():
    from at_probe.interventions.profiling import top_heads

    rankings = PROFILES["sink_head_ranking"]
    down = parse_setting("sink_scaling:rate=0.5,top=3", PROFILES)[1]
    up = parse_setting("sink_scaling_placebo:rate=2,top=3", PROFILES)[1]
    act = parse_setting("sink_calibration:top=3", PROFILES)[1]
    assert down.head_config == top_heads(rankings["scale_down"], 3) == {0: (0, 1, 2)}
    assert up.head_config == top_heads(rankings["scale_up"], 3) == {3: (2, 3, 4)}
    assert act.head_config == top_heads(rankings["calibration"], 3)
    assert parse_setting("sink_scaling:rate=2")[1].head_config is None  # no top: every head, no profile needed
    with pytest.raises(SettingError, match="need the development profile 'sink_head_ranking'"):
        parse_setting("sink_scaling:rate=2,top=3")
    with pytest.raises(SettingError, match="no 'scale_up' ranking"):
        parse_setting("sink_scaling:rate=2,top=3", {"sink_head_ranking": {"scale_down": rankings["scale_down"]}})
    with pytest.raises(SettingError, match="head_config, or layers"):
        parse_setting("sink_scaling:rate=2,top=3,layers=1-2", PROFILES)


def test_an_unknown_kind_lists_the_registered_ones_and_the_nearest():
    with pytest.raises(UnknownChoiceError) as err:
        registry.method("calibraton")
    message = str(err.value)
    assert all(repr(k) in message for k in registry.kinds())
    assert message.endswith("did you mean 'calibration'?")
    with pytest.raises(SettingError, match=r"expected one of 'baseline', 'paper', .*did you mean 'sra'\?$"):
        parse_setting("sr:")
    with pytest.raises(UnknownChoiceError, match="unknown setting kind 'nope'"):
        registry.unregister("nope")


def test_duplicate_registration_is_refused():
    paper = registry.method("paper")
    with pytest.raises(ValueError, match="'paper' is already registered"):
        registry.register(Method("paper", dict, {}))
    assert registry.method("paper") is paper


def test_every_placebo_twin_is_registered_with_the_methods_keys_and_a_seed():
    twins = {m.kind: m.placebo for m in map(registry.method, registry.kinds()) if m.placebo is not None}
    assert set(twins) == {"paper", "calibration", "emphasis", "sink_scaling", "sink_calibration", "multiscale_positions"}
    for kind, placebo in twins.items():
        assert placebo.kind in registry.kinds() and registry.is_placebo(placebo.kind)
        twin_keys = registry.method(placebo.kind).keys
        assert set(registry.method(kind).keys) | {"seed"} <= set(twin_keys), kind
        for extra in placebo.roles.values():  # a role's extra keys are the twin's
            assert set(extra) <= set(twin_keys), kind
    assert not registry.is_placebo("paper")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"kind": "baseline", "cls": dict, "keys": {}}, "other than 'baseline'"),
        ({"kind": "my:kind", "cls": dict, "keys": {}}, "a word"),
        ({"kind": "x", "cls": dict, "keys": {}, "profile": "bias"}, "go together"),
        ({"kind": "x", "cls": dict, "keys": {"top": Key(int, field=None)}}, "no profile_args reads them"),
    ],
)
def test_a_malformed_method_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        Method(**bad)


@dataclass(frozen=True)
class _Toy:
    a: int = 7
    b: str = ""
    c: float = 1.0
    e: int = 0
    unset: int | None = None


def test_build_fills_defaults_and_names_what_the_object_holds():
    """Omitted keys: ``Key.default`` (a value or a function of the others), else the class's own;
    the name reads every value back from the object, leaves out None and sorts the keys."""
    m = Method("toy", _Toy, {"c": Key(float, default=0.5), "b": Key(str, default=lambda v: f"from-{v['c']}"),
                             "a": Key(int), "d": Key(int, field="e", show=lambda v: f"<{v}>"),
                             "unset": Key(int)}, placebo=Placebo("toy_placebo"))
    edit, name = m.build({"d": 4})
    assert edit == _Toy(a=7, b="from-0.5", c=0.5, e=4) and name == "toy:a=7,b=from-0.5,c=0.5,d=<4>"
    assert m.build({"a": 1, "unset": 2})[1] == "toy:a=1,b=from-0.5,c=0.5,d=<0>,unset=2"
    assert m.placebo.roles == {"placebo": {}}
