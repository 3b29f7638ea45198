"""Overhead benchmarks, measured side by side in one process (ratios, not absolute times).

A thin wrapper: ``python analyses/bench.py ARGS`` is ``at-probe bench ARGS``; the command lives in
``at_probe.cli.bench`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
