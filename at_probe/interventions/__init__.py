"""Attention interventions: the shared protocol (``base``), which passes are one prompt
(``tracking``), one registry of methods (``registry``), and one module per method: the
transition (paper 2023, its placebo, SRA 2025; arithmetic in ``transition_ops``), PASTA-style
emphasis, position calibration, temperature, ZeroTuning-style sink scaling, ACT-style sink
calibration, adaptive temperature, Ms-PoE-style multi-scale positions.

May import: ``at_probe.runs``, ``at_probe.models``, ``at_probe.flow`` (position calibration
measures its bias with the probe).
"""

# Each method module registers its setting kinds at its bottom, so importing them here fills the
# registry whenever anything under at_probe.interventions is imported: no lookup can miss a
# method, and the registry imports no method (no cycle). Chosen over a lazy import on first
# lookup, which would hide the list of methods inside the registry. A new method: one line here.
# (This order is the order of the kinds in error messages.)
from at_probe.interventions import (  # noqa: F401, I001
    transition, temperature, calibration, emphasis, sink_scaling, sink_calibration, adaptive_temperature,
    multiscale_positions,
)
