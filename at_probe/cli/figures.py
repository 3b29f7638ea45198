"""Regenerate every figure in ``figures/`` from the committed data, without recomputing.

Each figure ``figures/<analysis>/<name>.png`` sits next to ``<name>.csv``, the tidy data it
plots; this script redraws every PNG whose CSV has a known plot (``at_probe.runs.plotting.PLOTS``).
To recompute the data itself, rerun the analysis with ``--out``/``--figures`` pointing there
(the commands are in ``figures/README.md``).

Usage:
    python analyses/figures.py [--root figures]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from at_probe.cli.args import ArgumentParser, existing_dir, prog
from at_probe.runs.plotting import redraw


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="figures.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=existing_dir, default=Path(__file__).resolve().parents[2] / "figures")
    args = p.parse_args(argv)
    if not args.root.is_dir():  # the default (an explicit --root is checked by its type)
        print(f"{prog('figures.py')}: error: argument --root: no such directory: {args.root}", file=sys.stderr)
        return 2
    written = [path for folder in sorted({c.parent for c in args.root.rglob("*.csv")}) for path in redraw(folder)]
    for path in written:
        print(path)
    print(f"redrew {len(written)} figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
