"""The long-context retrieval bench: needles in XSum text at 1k-8k tokens, under settings.

Prompts (``at_probe.longctx.tasks``): passkey, key-value needle, key-value with 3 distractor
needles, variable tracking; a haystack of development-split XSum documents (never the XSum
experiment's test documents); the needle at the sentence end at or before each depth. Each
(prompt, setting) is scored in one teacher-forced pass (``at_probe.longctx.scoring``): exact
match of the answer (primary), its log-probability, and the last prompt token's attention mass
and value-weighted flow on the needle per layer; with ``--knockout-estimate`` also the causal
map's estimate, per layer, of the answer's log-probability change if the needle were knocked
out, and the exact change with it knocked out at every layer (a backward and a forward pass
more: about three to four times the time); with ``--reply-tokens N`` also a greedy reply of up
to N tokens and RULER's match of it (the fraction of the answer's items it holds: the score
``vt`` needs, whose replies never open with the answer; one more pass and N decoding steps).

Settings as in ``xsum_eval.py`` (``baseline``, ``paper:...``, ``placebo:...,seed=S``,
``sra:...``, ``temperature:...``, ``emphasis:...`` and ``calibration:...`` with the development
profiles of ``--profiles``, an ``alternatives_select.py`` selection.json). The experiment's
commands and its declared comparisons: docs/longctx.md.

The run directory holds ``manifest.json`` and ``records.jsonl`` (one line per prompt and
setting). Killed and re-run with the same arguments it continues where it stopped; a run may
gain settings (the records already there stay). Work goes prompt by prompt (every setting of
a prompt before the next prompt), so a run stopped early holds paired records.
``--attention-rows`` (default 256) runs attention over blocks of query rows
(``at_probe.models.chunked``: the same numbers, less memory and time at long context).
``--paired-with DIR`` (repeatable) skips the (prompt, setting) pairs another run directory
already holds: the report pools the runs, so its records pair with this run's.
``--check N`` recomputes the first N prompts' records of ``--out`` and compares them with the
committed ones (exit 1 on a difference).

Usage:
    python analyses/longctx.py --tasks passkey --lengths 1024,2048,4096 --prompts 100 \\
        --settings "baseline;sra:" --out figures/longctx-smollm2/primary
    python analyses/longctx_report.py figures/longctx-smollm2/primary
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import at_probe
from at_probe.cli.args import (
    ArgumentParser,
    UsageError,
    add_sweep_arguments,
    check_context,
    existing_dir,
    existing_file,
    int_at_least,
    model_name,
    output_dir,
    positive_int,
    prog,
    sweep_options,
    torch_device,
)
from at_probe.longctx.run import LongctxWorkerFactory, plan_specs, prompt_hashes
from at_probe.longctx.tasks import DEPTHS, LENGTHS, TASKS, development_documents
from at_probe.models.loading import DEFAULT_MODEL, load_tokenizer, model_shape
from at_probe.runs.runfiles import (
    MANIFEST_DEFAULTS,
    check_manifest,
    ensure_manifest,
    file_sha256,
    owned_run,
    read_jsonl,
    read_manifest,
)
from at_probe.runs.sweep import RecordSink, plan_units, run_units
from at_probe.xsum import SettingError, check_settings, parse_settings
from at_probe.xsum.release import release_files

DEFAULT_ROWS = 256
"""Query rows per attention block of the bench (fastest of 128-512 on 2 CPU cores at 4k tokens)."""


def _items(kind: type, allowed: tuple[Any, ...] | None, what: str) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
        bad = [v for v in values if allowed is not None and v not in allowed]
        if not values or bad or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give distinct {what}" + (f" among {', '.join(map(str, allowed))}" if allowed else ""))
        return values
    return parse


def _depth(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise ValueError(text)
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="longctx.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=model_name, default=DEFAULT_MODEL,
                   help="'smollm2' (default), 'tiny', a local HF Llama directory, or a hub id")
    p.add_argument("--data", type=existing_dir, default=Path("../shared/data/xsum-at-release"),
                   help="the XSum release (its development documents are the haystack)")
    p.add_argument("--tasks", type=_items(str, TASKS, "tasks"), default=list(TASKS),
                   help=f"comma-separated, among {', '.join(TASKS)} (default all)")
    p.add_argument("--lengths", type=_items(int, None, "token counts"), default=list(LENGTHS),
                   help="prompt lengths in tokens, comma-separated (default 1024,2048,4096,8192)")
    p.add_argument("--depths", type=_items(_depth, None, "depths in [0, 1]"), default=list(DEPTHS),
                   help="needle depths, comma-separated; prompt i takes depth i mod their count "
                        "(default 0.1,0.3,0.5,0.7,0.9)")
    p.add_argument("--prompts", type=positive_int, default=30, help="prompts per task and length (default 30)")
    p.add_argument("--settings", default="baseline", help="';'-separated settings (default baseline)")
    p.add_argument("--profiles", type=existing_file, default=None,
                   help="an alternatives_select.py selection.json: the profiles emphasis and calibration need")
    p.add_argument("--attention-rows", type=positive_int, default=DEFAULT_ROWS,
                   help=f"query rows per attention block (default {DEFAULT_ROWS})")
    p.add_argument("--knockout-estimate", action="store_true",
                   help="also record needle_knockout (per layer, the first-order estimate of the answer's "
                        "log-probability change if the needle were knocked out) and needle_knockout_exact "
                        "(knocked out at every layer): about 3-4x the time")
    p.add_argument("--reply-tokens", type=int_at_least(0), default=0, metavar="N",
                   help="also generate a greedy reply of up to N tokens and record reply, reply_match "
                        "(the fraction of the answer's items it holds, as RULER scores) and reply_ended; the "
                        "longest length plus N must fit the context; default 0: no reply")
    p.add_argument("--paired-with", type=existing_dir, action="append", default=[], metavar="DIR",
                   help="another run directory whose (prompt, setting) records are not scored again (repeatable)")
    p.add_argument("--check", type=positive_int, default=None, metavar="N",
                   help="recompute the first N prompts' records of --out and compare (nothing is written)")
    p.add_argument("--device", type=torch_device, default=None)
    p.add_argument("--out", type=output_dir, required=True, help="run directory")
    add_sweep_arguments(p)
    return p.parse_args(argv)


def _config(args: argparse.Namespace, settings: dict[str, Any], tokenizer: Any,
            specs: list[dict[str, Any]]) -> dict[str, Any]:
    data = {name: file_sha256(path) for name, path in sorted(release_files(args.data).items())}
    return {"model": args.model, "data_sha256": data, "tasks": args.tasks, "lengths": args.lengths,
            "depths": args.depths, "prompts": args.prompts, "settings": list(settings),
            **({"profiles_sha256": file_sha256(args.profiles)} if args.profiles else {}),
            "attention_rows": args.attention_rows, "knockout_estimate": args.knockout_estimate,
            "reply_tokens": args.reply_tokens, "prompt_sha256": prompt_hashes(tokenizer, specs),
            "at_probe_version": at_probe.__version__}


_SAME_RECORDS = ("model", "data_sha256")
"""Manifest keys a ``--paired-with`` run must share with this one for its records to pair."""


def _paired_with(args: argparse.Namespace, config: dict[str, Any]) -> list[str]:
    """The ``--paired-with`` directories as the run's manifest records them.

    The run's records depend on them (the pairs they hold are not scored here), so a run made
    with them resumes only with the same directories (however spelled), and one made without
    them only without.

    Raises:
        UsageError: a directory holds no run (manifest and records) of the same model, data and
            profiles, or a resumed run was made with other directories.
    """
    import json

    given = [str(d) for d in args.paired_with]
    for run in args.paired_with:
        if not _is_run(run):
            raise UsageError(f"argument --paired-with: {run} holds no run (manifest.json and records.jsonl)")
        theirs = json.loads((run / "manifest.json").read_text())
        keys = [*_SAME_RECORDS, *(["profiles_sha256"] if "profiles_sha256" in theirs else [])]
        differ = [k for k in keys if k in config and theirs.get(k) != config[k]]
        if differ:
            raise UsageError(f"argument --paired-with: {run} is a run of another {', '.join(differ)}")
        if config.get("knockout_estimate") and not theirs.get("knockout_estimate"):
            raise UsageError(f"argument --paired-with: {run} has no knockout estimates, which its pairs would lack here")
        ours, their_hashes = config.get("prompt_sha256", {}), theirs.get("prompt_sha256", {})
        moved = sorted(p for p in ours.keys() & their_hashes.keys() if ours[p] != their_hashes[p])
        if moved:
            raise UsageError(f"argument --paired-with: {run} scored {len(moved)} of these prompts from other "
                             f"text or tokens (prompt_sha256), e.g. {moved[0]}")
        if config["reply_tokens"] and theirs.get("reply_tokens", 0) != config["reply_tokens"]:
            raise UsageError(f"argument --paired-with: {run} has no replies of {config['reply_tokens']} tokens, "
                             "which its pairs would lack here")
    manifest = args.out / "manifest.json"
    if not manifest.is_file():
        return given
    recorded = json.loads(manifest.read_text()).get("paired_with", [])
    if {Path(p).resolve() for p in recorded} != {d.resolve() for d in args.paired_with}:
        raise UsageError(f"argument --paired-with: {args.out} was run with "
                         f"{' '.join(recorded) if recorded else 'none'}; give the same")
    return recorded


def _same_arithmetic(runs: list[Path], described: dict[str, Any]) -> None:
    """Refuse ``--paired-with`` runs made in another dtype than this run's model (their records
    would pair bf16 scores with fp32 ones) or with other torch or transformers versions (the
    rule a resumed run follows: its manifest refuses them); the device may differ (fp32 on a GPU
    agrees with the CPU within the report's pooling check).

    Raises:
        UsageError: a run's manifest names another dtype or other versions.
    """
    import json

    for run in runs:
        manifest = json.loads((run / "manifest.json").read_text())
        theirs = manifest.get("dtype")
        if theirs is not None and theirs != described.get("dtype"):
            raise UsageError(f"argument --paired-with: {run} ran in {theirs}, this run's model in {described.get('dtype')}")
        versions = manifest.get("versions")
        if versions is not None and versions != described.get("versions"):
            raise UsageError(f"argument --paired-with: {run} ran with {versions}, this run with "
                             f"{described.get('versions')}")


def _scored_elsewhere(runs: list[Path]) -> set[tuple[str, str]]:
    """(prompt id, setting) pairs held by the ``--paired-with`` run directories."""
    return {(r.get("doc_id"), r.get("setting")) for run in runs for r in read_jsonl(run / "records.jsonl")}


def _is_run(directory: Path) -> bool:
    """Whether ``directory`` holds a run (``manifest.json`` and ``records.jsonl``)."""
    return (directory / "manifest.json").is_file() and (directory / "records.jsonl").is_file()


def _profiles(path: Path) -> dict[str, Any] | None:
    """The ``profiles`` of an ``alternatives_select.py`` selection.json.

    Raises:
        UsageError: the file is not JSON, or not a JSON object.
    """
    try:
        return read_manifest(path).get("profiles")
    except UsageError as err:
        raise UsageError(f"argument --profiles: {err} (a selection.json is a JSON object with 'profiles')"
                         ) from None


def check(args: argparse.Namespace, specs: list[dict[str, Any]], profiles: dict[str, Any] | None) -> int:
    """Recompute the first ``args.check`` prompts' records and compare with those on disk."""
    import json

    records = {(r["doc_id"], r["setting"]): r for r in read_jsonl(args.out / "records.jsonl")}
    manifest = json.loads((args.out / "manifest.json").read_text())
    chosen = [s for s in specs if any((s["id"], name) in records for name in manifest["settings"])][: args.check]
    if not chosen:
        print(f"{prog('longctx.py')}: error: argument --check: {args.out} holds no records of these prompts",
              file=sys.stderr)
        return 2
    worker = LongctxWorkerFactory(args.model, args.device, ";".join(manifest["settings"]), profiles,
                                  manifest["attention_rows"], manifest.get("knockout_estimate", False),
                                  manifest.get("reply_tokens", 0))()
    differ = 0
    for spec in chosen:
        for name in manifest["settings"]:
            old = records.get((spec["id"], name))
            if old is None:
                continue
            (new,) = worker(plan_units([name], [spec], 1)[0])
            bad = [k for k in sorted((old.keys() | new.keys()) - {"wall_seconds"})
                   if k not in old or k not in new or not _close(old[k], new[k], k)]
            differ += bool(bad)
            print(f"{spec['id']} {name}: " + ("same" if not bad else f"differs in {', '.join(bad)}"))
    return 1 if differ else 0


def _close(a: Any, b: Any, key: str) -> bool:
    """Equal, numbers within a relative 1e-3 or one unit of the last decimal the record keeps."""
    from at_probe.longctx.scoring import DECIMALS

    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, key) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-3, abs_tol=1.01 * 10.0 ** -DECIMALS.get(key, 6))
    return a == b


_CHECKED_FLAGS = {"model": "--model", "data_sha256": "--data", "profiles_sha256": "--profiles",
                  "settings": "--settings", "attention_rows": "--attention-rows",
                  "knockout_estimate": "--knockout-estimate", "reply_tokens": "--reply-tokens"}
"""What ``--check`` needs the same as the run it checks, and the flag that gives each."""


def _same_as_checked(out: Path, config: dict[str, Any]) -> None:
    """Raises UsageError naming the first flag that differs from the run in ``out``."""
    import json

    manifest = {**MANIFEST_DEFAULTS, **json.loads((out / "manifest.json").read_text())}
    for key, flag in _CHECKED_FLAGS.items():
        ours, theirs = config.get(key), manifest.get(key)
        if key == "settings":  # the same settings in any order (the check takes the run's)
            ours, theirs = sorted(ours or []), sorted(theirs or [])
        if ours != theirs:
            shown = "" if isinstance(theirs, (dict, list)) else f" ({theirs!r}, not {ours!r})"
            raise UsageError(f"argument {flag}: {out} was run with another {key}{shown}: "
                             "--check reruns the run's own command")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = sweep_options(args)
        if args.check and not _is_run(args.out):
            raise UsageError(f"argument --check: {args.out} holds no run (manifest.json and records.jsonl) to check")
        profiles = _profiles(args.profiles) if args.profiles else None
        try:
            settings = parse_settings(args.settings, profiles)
        except SettingError as err:
            raise UsageError(f"argument --settings: {err}") from None
        shape = model_shape(args.model)
        try:
            check_settings(settings, shape, attention_rows=args.attention_rows)
        except SettingError as err:
            raise UsageError(f"argument --settings: {err}") from None
        check_context(args.lengths, shape, args.model)
        if args.reply_tokens:  # the reply follows a prompt of up to the longest length
            check_context([max(args.lengths) + args.reply_tokens], shape, args.model, flag="--reply-tokens")
        tokenizer = load_tokenizer(args.model)
        try:
            documents = development_documents(args.data)
        except FileNotFoundError as err:
            raise UsageError(f"argument --data: {err}") from err
        try:
            specs = plan_specs(tokenizer, documents, args.tasks, args.lengths, args.depths, args.prompts)
        except ValueError as err:  # a length too short for a prompt, or longer than the documents
            raise UsageError(f"argument --lengths: {err}") from err
        config = _config(args, settings, tokenizer, specs)
        if args.check:
            _same_as_checked(args.out, config)
        paired_with = _paired_with(args, config)
        config.update({"paired_with": paired_with} if paired_with else {})
        elsewhere = _scored_elsewhere(args.paired_with)
    except (SettingError, UsageError, FileNotFoundError, ValueError, OSError) as err:
        print(f"{prog('longctx.py')}: error: {err}", file=sys.stderr)
        return 2
    if args.check:
        try:
            return check(args, specs, profiles)
        except (UsageError, OSError) as err:  # a corrupt records file; a bug keeps its traceback
            print(f"{prog('longctx.py')}: error: {err}", file=sys.stderr)
            return 2
    try:
        with owned_run(args.out):
            check_manifest(args.out, config, growable=("settings",))
            sink = RecordSink(args.out / "records.jsonl")
            position = {s["id"]: i for i, s in enumerate(specs)}
            plan = sorted(plan_units(list(settings), specs, 1), key=lambda u: position[u.doc_ids[0]])
            pending = sink.pending(plan)
            units = [u for u in pending if (u.doc_ids[0], u.setting) not in elsewhere]
            print(f"{len(specs)} prompts x {len(settings)} settings: {len(sink.done)} done"
                  + (f", {len(pending) - len(units)} in --paired-with runs" if elsewhere else "") + f", {len(units)} to go")
            factory = LongctxWorkerFactory(args.model, args.device, ";".join(settings), profiles, args.attention_rows,
                                           args.knockout_estimate, args.reply_tokens)
            with tqdm(total=len(units), desc="longctx", unit="prompt") as bar:
                run_units(units, factory, sink.write,
                          start=lambda described: (_same_arithmetic(args.paired_with, described),
                                                   ensure_manifest(args.out, {**config, **described},
                                                                   growable=("settings",))),
                          progress=lambda unit: bar.update(1), **options)
    except (UsageError, OSError) as err:  # a bug's own error keeps its traceback
        print(f"{prog('longctx.py')}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sink.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
