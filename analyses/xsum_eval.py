"""XSum summarisation with and without the transition, end to end, resumable.

A thin wrapper: ``python analyses/xsum_eval.py ARGS`` is ``at-probe xsum-eval ARGS``; the command lives in
``at_probe.cli.xsum_eval`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.xsum_eval import main

if __name__ == "__main__":
    sys.exit(main())
