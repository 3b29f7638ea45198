"""Information flow: the reductions (regions, masses, rollout, knockout arithmetic), the
``FlowProbe`` hooks, corpus statistics over documents, knockout sweeps and attribution patching.

May import: ``at_probe.runs``, ``at_probe.models``.
"""
