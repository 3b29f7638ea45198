"""Optional LLM judge for an ``xsum_eval.py`` run, with the paper's evaluation prompt.

A thin wrapper: ``python analyses/xsum_judge.py ARGS`` is ``at-probe xsum-judge ARGS``; the command lives in
``at_probe.cli.xsum_judge`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.xsum_judge import main

if __name__ == "__main__":
    sys.exit(main())
