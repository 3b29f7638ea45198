"""What Ray adds to a sweep, measured side by side in one process (``at_probe.runs.sweep``).

A thin wrapper: ``python analyses/bench_sweep.py ARGS`` is ``at-probe bench-sweep ARGS``; the command lives in
``at_probe.cli.bench_sweep`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.bench_sweep import main

if __name__ == "__main__":
    sys.exit(main())
