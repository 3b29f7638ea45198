"""Report of an ``xsum_eval.py`` run: paired differences, held-out selection, placebo control.

A thin wrapper: ``python analyses/xsum_report.py ARGS`` is ``at-probe xsum-report ARGS``; the command lives in
``at_probe.cli.xsum_report`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.xsum_report import main

if __name__ == "__main__":
    sys.exit(main())
