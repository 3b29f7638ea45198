"""Run plumbing, the bottom layer: run directories (lock, manifests, atomic JSON, records one run
takes from another), sweeps in one process or on Ray actors, statistics (paired bootstrap,
held-out selection), figures, seeding, memory release and the errors of bad input.

May import: nothing else from at_probe (``docs/design.md``, the layer rule).
"""
