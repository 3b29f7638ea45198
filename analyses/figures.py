"""Regenerate every figure in ``figures/`` from the committed data, without recomputing.

A thin wrapper: ``python analyses/figures.py ARGS`` is ``at-probe figures ARGS``; the command lives in
``at_probe.cli.figures`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.figures import main

if __name__ == "__main__":
    sys.exit(main())
