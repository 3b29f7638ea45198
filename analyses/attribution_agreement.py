"""How far the one-pass causal map can be trusted: attribution patching vs exact knockout.

A thin wrapper: ``python analyses/attribution_agreement.py ARGS`` is ``at-probe attribution-agreement ARGS``; the command lives in
``at_probe.cli.attribution_agreement`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.attribution_agreement import main

if __name__ == "__main__":
    sys.exit(main())
