"""Development profiling and sweep of the alternatives: emphasis, calibration, temperature.

A thin wrapper: ``python analyses/alternatives_select.py ARGS`` is ``at-probe alternatives-select ARGS``; the command lives in
``at_probe.cli.alternatives_select`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.alternatives_select import main

if __name__ == "__main__":
    sys.exit(main())
