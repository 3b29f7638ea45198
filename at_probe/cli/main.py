"""The ``at-probe`` console script: every analysis as a subcommand.

``at-probe NAME ARGS`` runs ``at_probe.cli.<name>.main(ARGS)`` (dashes for underscores), the
same command as ``python analyses/<name>.py ARGS``; ``at-probe NAME --help`` lists its flags and
``at-probe`` alone lists the commands. Unknown commands exit 2 naming the nearest one.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from at_probe.cli.args import invoked_as
from at_probe.runs.choices import choice_message

COMMANDS: dict[str, str] = {
    "flow": "information flow on one document or a corpus (baseline vs interventions, causal map)",
    "xsum-eval": "summaries and NLL of an XSum bucket under settings (resumable, Ray)",
    "xsum-select": "the development sweep of the transition settings and the held-out choice",
    "alternatives-select": "the development sweep of the alternatives (emphasis, calibration, temperature)",
    "xsum-report": "a run's report: paired differences with intervals, the primary metric first",
    "xsum-experiment": "the experiment's report over buckets (semantic similarity, placebo draws)",
    "xsum-judge": "an optional LLM judge of a run, with the paper's evaluation prompt (needs an API)",
    "methods-report": "the transition and its alternatives side by side on the XSum test set",
    "paper-scores": "the paper's release re-analysed: GPT-4 judgements per setting",
    "longctx": "the long-context retrieval bench: needles at 1k-8k tokens under settings (resumable, Ray)",
    "longctx-report": "the long-context bench's report: declared comparisons, accuracy by depth and length",
    "attribution-agreement": "attribution patching vs exact knockout over documents",
    "figures": "redraw every committed figure from its CSV",
    "bench": "speed and memory ratios, measured side by side in one process",
    "bench-sweep": "what Ray adds to a sweep, measured side by side",
    "train-tiny": "train the embedded tiny Llama (development only)",
}
"""Subcommand -> one line of what it does (``at-probe`` without arguments prints these)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: at-probe COMMAND [ARGS]   (at-probe COMMAND --help: its flags)", "", "commands:"]
    return "\n".join(lines + [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"at-probe: error: argument COMMAND: {choice_message('command', name, COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"at_probe.cli.{name.replace('-', '_')}")
    with invoked_as(f"at-probe {name}"):  # usage and errors name the command the user typed
        return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
