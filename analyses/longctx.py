"""The long-context retrieval bench: needles in XSum text at 1k-8k tokens, under settings.

A thin wrapper: ``python analyses/longctx.py ARGS`` is ``at-probe longctx ARGS``; the command lives in
``at_probe.cli.longctx`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.longctx import main

if __name__ == "__main__":
    sys.exit(main())
