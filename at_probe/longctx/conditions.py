"""The experiment's conditions and comparisons, as declared in docs/longctx.md before the runs.

Each role names a canonical setting string (``at_probe.xsum.parse_setting``); a placebo role
names several draws (seeds 0-2), averaged per prompt before a comparison. ``PRIMARY`` are the
two declared primary comparisons (passkey exact match pooled over ``PRIMARY_LENGTHS``).
"""

from __future__ import annotations

from dataclasses import dataclass

SRA_EXAMPLE = ("sra:begin_length=5,elimi_factor_inter=0.5,elimi_factor_outer=0.5,strengthen_factor_inter=5.0,"
               "strengthen_factor_outer=5.0,threshold_len=50")
PLACEBO_SEEDS = (0, 1, 2)


def _draws(setting: str) -> tuple[str, ...]:
    return tuple(f"{setting},seed={s}" for s in PLACEBO_SEEDS)


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


def settings_of(roles: tuple[str, ...] | list[str]) -> list[str]:
    """The settings of ``roles``, in order, each once."""
    return list(dict.fromkeys(s for role in roles for s in ROLES[role]))
