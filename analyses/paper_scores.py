"""Re-analysis of the paper's released GPT-4 judgements (no model needed).

A thin wrapper: ``python analyses/paper_scores.py ARGS`` is ``at-probe paper-scores ARGS``; the command lives in
``at_probe.cli.paper_scores`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.paper_scores import main

if __name__ == "__main__":
    sys.exit(main())
