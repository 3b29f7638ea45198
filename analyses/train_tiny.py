"""Train the embedded tiny Llama (``at_probe/assets/tiny-xsum``) on XSum text.

A thin wrapper: ``python analyses/train_tiny.py ARGS`` is ``at-probe train-tiny ARGS``; the command lives in
``at_probe.cli.train_tiny`` (``--help`` there lists its flags).
"""

import sys

from at_probe.cli.train_tiny import main

if __name__ == "__main__":
    sys.exit(main())
