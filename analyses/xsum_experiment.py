"""Report of the XSum experiment: test runs of several buckets, compared by role, with the

A thin wrapper: ``python analyses/xsum_experiment.py ARGS`` is ``at-probe xsum-experiment ARGS``; the command lives in
``at_probe.cli.xsum_experiment`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.xsum_experiment import main

if __name__ == "__main__":
    sys.exit(main())
