"""Attention interventions: the shared protocol (``base``), which passes are one prompt
(``tracking``), one registry of methods (``registry``), and one module per method: the
transition (paper 2023, its placebo, SRA 2025; arithmetic in ``transition_ops``), PASTA-style
emphasis, position calibration, temperature.

May import: ``at_probe.runs``, ``at_probe.models``, ``at_probe.flow`` (position calibration
measures its bias with the probe).
"""
