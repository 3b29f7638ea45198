"""Development sweep: choose the transition settings on documents the test never sees.

A thin wrapper: ``python analyses/xsum_select.py ARGS`` is ``at-probe xsum-select ARGS``; the command lives in
``at_probe.cli.xsum_select`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.xsum_select import main

if __name__ == "__main__":
    sys.exit(main())
