"""Report of long-context bench runs: the declared comparisons, accuracy, the needle's attention.

A thin wrapper: ``python analyses/longctx_report.py ARGS`` is ``at-probe longctx-report ARGS``; the command lives
in ``at_probe.cli.longctx_report`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.longctx_report import main

if __name__ == "__main__":
    sys.exit(main())
