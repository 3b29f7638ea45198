"""The experiment's conditions and comparisons, as declared in docs/longctx.md before the runs.

Each role names a canonical setting string (``at_probe.xsum.parse_setting``); a placebo role
names several draws (seeds 0-2), averaged per prompt before a comparison. ``PRIMARY`` are the
two declared primary comparisons (passkey exact match pooled over ``PRIMARY_LENGTHS``).
``ROLES`` are the bench's conditions (the primary and secondary runs); ``PEER_ROLES`` the sink
and position peers and the transition's parts (issue #23, a run of their own), with
``PEERS`` their comparisons; ``ALL_ROLES`` both, as the report reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

SRA_EXAMPLE = ("sra:begin_length=5,elimi_factor_inter=0.5,elimi_factor_outer=0.5,strengthen_factor_inter=5.0,"
               "strengthen_factor_outer=5.0,threshold_len=50")
PLACEBO_SEEDS = (0, 1, 2)


def _draws(setting: str) -> tuple[str, ...]:
    """The placebo draws of ``setting`` (``{seed}`` marks where the seed goes in the canonical
    name; at the end when absent)."""
    template = setting if "{seed}" in setting else setting + ",seed={seed}"
    return tuple(template.format(seed=s) for s in PLACEBO_SEEDS)


ROLES: dict[str, tuple[str, ...]] = {
    "baseline": ("baseline",),
    "sra": (SRA_EXAMPLE,),
    "paper_example": ("paper:alpha=1.0,beta=0.5,k=2",),
    "placebo_example": _draws("placebo:alpha=1.0,beta=0.5,k=2"),
    "paper_selected": ("paper:alpha=0.5,beta=0.8,k=1",),
    "placebo_selected": _draws("placebo:alpha=0.5,beta=0.8,k=1"),
    "emphasis": ("emphasis:alpha=0.01,target=document,top=2",),
    "emphasis_placebo": ("emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=2",),
    "calibration": ("calibration:strength=0.25",),
    "calibration_placebo": ("calibration_placebo:seed=0,strength=0.25",),
    "temperature": ("temperature:tau=1.15",),
}
"""Role -> its settings (one, or a placebo's draws)."""

PEER_PROFILES = "figures/xsum-smollm2/peers-dev-1900/selection.json"
"""The development selection the peers' settings come from (its ``profiles`` hold the sink head
rankings their ``top=16`` reads: ``longctx.py --profiles``)."""

PEER_ROLES: dict[str, tuple[str, ...]] = {
    "sink_scaling": ("sink_scaling:rate=2.0,top=16",),
    "sink_scaling_placebo": _draws("sink_scaling_placebo:rate=2.0,seed={seed},top=16"),
    "sink_calibration": ("sink_calibration:beta=0.4,threshold=0.1,top=16",),
    "sink_calibration_placebo": _draws("sink_calibration_placebo:beta=0.4,seed={seed},threshold=0.1,top=16"),
    "adaptive_temperature": ("adaptive_temperature:",),
    "multiscale_positions": ("multiscale_positions:high=1.4,low=1.1",),
    "multiscale_positions_placebo": _draws("multiscale_positions_placebo:high=1.4,low=1.1,seed={seed}"),
    "paper_sink": ("paper:alpha=0.5,beta=0.8,k=1,parts=sink",),
    "paper_move": ("paper:alpha=0.5,beta=0.8,k=1,parts=move",),
    "paper_move_placebo": _draws("placebo:alpha=0.5,beta=0.8,k=1,parts=move,seed={seed}"),
}
"""The peers' roles: each peer's XSum development choice for 1,900 tokens (``PEER_PROFILES``)
and its placebo's draws, and the XSum-selected paper setting's sink part alone and move part
alone (with its placebo); the full setting is ``paper_selected``."""

PEERS_RUN_ROLES = ("baseline", *PEER_ROLES)
"""The roles of the peers' run (``figures/longctx-smollm2/peers``)."""

ALL_ROLES: dict[str, tuple[str, ...]] = {**ROLES, **PEER_ROLES}
"""Every role the report reads."""

PRIMARY_ROLES = ("baseline", "sra", "paper_example", "placebo_example")
"""The roles of the primary run (``figures/longctx-smollm2/primary``)."""


@dataclass(frozen=True)
class Comparison:
    """``treated`` minus ``control`` (roles), paired per prompt."""

    treated: str
    control: str

    @property
    def label(self) -> str:
        return f"{self.treated} - {self.control}"


PRIMARY = (Comparison("sra", "baseline"), Comparison("paper_example", "placebo_example"))
"""The two declared primary comparisons."""
PRIMARY_TASK = "passkey"
PRIMARY_LENGTHS = (1024, 2048, 4096)
PRIMARY_PROMPTS = 100
"""Paired prompts per length the primary comparisons need before they answer."""
PRIMARY_LEVEL = 0.975
"""Each primary interval's level: 97.5% (Bonferroni for two comparisons at 95%)."""

SECONDARY = (
    Comparison("paper_selected", "placebo_selected"),
    Comparison("emphasis", "emphasis_placebo"),
    Comparison("calibration", "calibration_placebo"),
    *(Comparison(role, "baseline") for role in ROLES if role not in ("baseline", "sra")),
)
"""The declared secondary comparisons (each also per task and length)."""

PEERS = (
    *(Comparison(role, f"{role}_placebo") for role in PEER_ROLES if f"{role}_placebo" in PEER_ROLES),
    Comparison("adaptive_temperature", "temperature"),  # its control: one fixed temperature for every row
    *(Comparison(role, "baseline") for role in PEER_ROLES),
)
"""The peers' declared comparisons (docs/longctx.md, "The sink and position peers")."""


def settings_of(roles: tuple[str, ...] | list[str]) -> list[str]:
    """The settings of ``roles`` (of ``ALL_ROLES``), in order, each once."""
    return list(dict.fromkeys(s for role in roles for s in ALL_ROLES[role]))
