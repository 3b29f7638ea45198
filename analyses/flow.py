"""Information flow from the context to the point of generation, with and without the transition.

A thin wrapper: ``python analyses/flow.py ARGS`` is ``at-probe flow ARGS``; the command lives in
``at_probe.cli.flow`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.flow import main

if __name__ == "__main__":
    sys.exit(main())
