"""The transition and its alternatives side by side on the XSum test set: one table, one figure.

A thin wrapper: ``python analyses/methods_report.py ARGS`` is ``at-probe methods-report ARGS``; the command lives in
``at_probe.cli.methods_report`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.methods_report import main

if __name__ == "__main__":
    sys.exit(main())
