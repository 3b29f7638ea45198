"""Command-line checks shared by the analyses: a bad flag exits 2 with one line naming it.

Each value is checked once, by the argparse ``type`` of its flag (``positive_int``,
``existing_file``, ...), so argparse itself names the flag: ``flow.py: error: argument
--knockout: must be an integer >= 0, got '-1'``. Flags that contradict each other are refused
after parsing (``ArgumentParser.given`` / ``refuse``); a value that can only be checked against
the loaded model raises ``UsageError``, which each script prints in the same one-line form.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, NoReturn

from at_probe.runs.errors import UsageError  # noqa: F401  (raised by library checks of CLI input)

_INVOKED_AS: ContextVar[str | None] = ContextVar("invoked_as", default=None)


@contextmanager
def invoked_as(prog: str) -> Iterator[None]:
    """Inside the block, every ``ArgumentParser`` is named ``prog`` (``at-probe flow``) instead of
    its script's name (``flow.py``): the console script runs the same commands."""
    token = _INVOKED_AS.set(prog)
    try:
        yield
    finally:
        _INVOKED_AS.reset(token)


def prog(script: str) -> str:
    """The command's name in messages printed outside argparse: ``script`` (``"flow.py"``), or
    the command as typed under ``invoked_as`` (``"at-probe flow"``)."""
    return _INVOKED_AS.get() or script


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE``, exit code 2
    (without the usage block argparse prints first: ``--help`` shows it). Under ``invoked_as``,
    PROG is the command as typed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if _INVOKED_AS.get() is not None:
            kwargs["prog"] = _INVOKED_AS.get()
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")

    def given(self, args: Sequence[str] | None = None) -> frozenset[str]:
        """The options present on the command line ``args`` (default ``sys.argv[1:]``), by their
        first option string (``"--alpha"``), whatever their values; positionals are left out."""
        saved = [(action, action.default) for action in self._actions]
        try:  # parsed with every default suppressed, only the options given end up in the namespace
            for action, _ in saved:
                action.default = argparse.SUPPRESS
            present = vars(self.parse_known_args(args)[0])
        finally:
            for action, default in saved:
                action.default = default
        return frozenset(a.option_strings[0] for a, _ in saved if a.option_strings and a.dest in present)

    def refuse(self, given: Iterable[str], flags: Iterable[str], reason: str) -> None:
        """Exit 2 (``error``) naming the first of ``flags`` that is in ``given``, with ``reason``."""
        present = set(given)
        for flag in flags:
            if flag in present:
                self.error(f"argument {flag}: {reason}")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


def name_list(text: str) -> list[str]:
    """An argparse type: comma-separated names, at least one, each once (``a,b``)."""
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"must be comma-separated names, each once, got {text!r}")
    return names


positive_int = int_at_least(1)
"""An argparse type: an integer ``>= 1`` (counts of documents, layers, steps, ...)."""
nonnegative_int = int_at_least(0)
"""An argparse type: an integer ``>= 0`` (seeds, indices, counts where 0 means "none")."""


def _float(text: str, what: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number ``> 0``."""
    return _float(text, "a finite number > 0", lambda v: v > 0)


def nonnegative_float(text: str) -> float:
    """An argparse type: a finite number ``>= 0``."""
    return _float(text, "a finite number >= 0", lambda v: v >= 0)


def existing_file(text: str) -> Path:
    """An argparse type: the path of an existing file."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def existing_dir(text: str) -> Path:
    """An argparse type: the path of an existing directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return path


def _writable_place(path: Path, text: str) -> None:
    """Refuse a path under an existing file (nothing can be created there)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is not a directory: cannot write {text}")
            return


def output_dir(text: str) -> Path:
    """An argparse type: a directory to write into, existing or not (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    _writable_place(path, text)
    return path


def output_file(text: str) -> Path:
    """An argparse type: a file to write, existing or not (not an existing directory)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    _writable_place(path, text)
    return path


def model_name(text: str) -> str:
    """An argparse type: a model ``load_model`` can load, checked from its config alone
    (``at_probe.models.loading.model_shape``): ``smollm2``, ``tiny``, a checkpoint directory, or a hub id
    that is cached or reachable. An unknown name fails at once, listing these (and a near miss)."""
    from at_probe.models.loading import model_shape

    try:
        model_shape(text)
    except (OSError, ValueError) as err:
        raise argparse.ArgumentTypeError(" ".join(str(err).split())) from None
    return text


def torch_device(text: str) -> str:
    """An argparse type: a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``); whether the
    device exists here is left to loading (a Ray driver may pass ``cuda`` for its actors)."""
    import torch

    try:
        torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r}") from None
    return text


def add_fix_text_argument(parser: argparse.ArgumentParser) -> None:
    """``--fix-text``, shared by every command that reads the XSum release: repair its mojibake
    (``at_probe.xsum.load_records(fix_text=True)``), recorded in the run's manifest, off by
    default so that runs made without it stay reproducible."""
    parser.add_argument("--fix-text", action="store_true",
                        help="repair the release's mojibake (ftfy) in documents and references; recorded, "
                             "off by default so that runs made without it stay reproducible")


def add_sweep_arguments(parser: Any) -> None:
    """``--workers``, ``--ray-address`` and ``--gpus-per-worker`` for a sweep command's parser."""
    parser.add_argument("--workers", type=nonnegative_int, default=0,
                        help="Ray actors, each loading the model once (0, the default: this process, no Ray)")
    parser.add_argument("--ray-address", default=None,
                        help="join a Ray cluster (e.g. 'auto' on a node of it, or HOST:6379) instead of "
                             "starting a local one; --workers then defaults to 1 actor")
    parser.add_argument("--gpus-per-worker", type=nonnegative_float, default=None,
                        help="GPUs each actor asks Ray for (default: 1 with --device cuda, or without --device "
                             "where this machine has a GPU; else 0)")


def sweep_options(args: Any) -> dict[str, Any]:
    """The keyword arguments of ``run_units`` from ``add_sweep_arguments``' flags.

    With Ray and no ``--device``, the device is what ``load_model`` would pick here (a GPU when
    this machine has one): GPU actors must ask Ray for their GPU, or they would all share the
    first one. On a cluster whose head has no GPU, pass ``--device cuda``.
    """
    uses_ray = bool(args.workers or args.ray_address)
    gpus = args.gpus_per_worker
    if gpus is None:
        device = args.device
        if device is None and uses_ray:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        gpus = 1.0 if uses_ray and str(device or "").startswith("cuda") else 0.0
    if uses_ray and gpus and args.device not in (None, "cuda", "cuda:0"):
        raise UsageError(f"argument --device: {args.device} with Ray: each actor sees only its own GPU; "
                         "pass --device cuda")
    return {"workers": args.workers, "ray_address": args.ray_address, "gpus_per_worker": gpus}


def check_context(lengths: Sequence[int], shape: Any, model: str, flag: str = "--lengths") -> None:
    """Refuse token counts past the model's context (``shape.n_ctx``, from
    ``at_probe.models.loading.model_shape``; nothing is checked where its config does not say).

    Raises:
        UsageError: one of ``lengths`` is longer than the context.
    """
    context = getattr(shape, "n_ctx", None)
    if context is not None and max(lengths) > context:
        raise UsageError(f"argument {flag}: {max(lengths)} tokens exceed the context of {model} ({context} tokens)")


def check_prompts(docs: Iterable[dict[str, Any]], build: Callable[[dict[str, Any]], Any], *,
                  room_flag: str | None, regions: int | None = None) -> None:
    """Build each document's prompt as the run will, and split it into ``regions`` as the probe
    will, so that a flag leaving no room for a document or a document too short for the regions
    is refused before the run directory is written (inside the run it would surface as a plain
    ``ValueError`` of ``build_prompt`` or ``prompt_regions``).

    Args:
        docs: XSum records (``id``, ``document``, ``summary``).
        build: the run's own prompt of a record (an ``at_probe.models.prompts.Prompt``).
        room_flag: the flag that sets how many tokens a prompt may take, named when a prompt has
            no room for its document; None where no flag does (a reference that fills the context).
        regions: the document regions the run splits each prompt into; None for no split.

    Raises:
        UsageError: names the flag and the document.
    """
    from at_probe.flow.ops import prompt_regions

    flag = f"argument {room_flag}: " if room_flag else ""
    for doc in docs:
        try:
            prompt = build(doc)
        except ValueError as err:
            raise UsageError(f"{flag}document {doc['id']}: {err}") from None
        if regions is None:
            continue
        try:
            prompt_regions(len(prompt), regions, prompt.document)
        except ValueError as err:
            raise UsageError(f"argument --regions: document {doc['id']}: {err}") from None


def check_summary_room(tokenizer: Any, shape: Any, docs: Sequence[dict[str, Any]], max_new_tokens: int,
                       regions: int | None = None) -> None:
    """``check_prompts`` for the XSum runs, whose prompts are cut to the model's context
    (``shape.n_ctx``) less ``--max-new-tokens``: the room does not depend on the document, so one
    is built, unless ``regions`` asks for every document's split."""
    from at_probe.models.prompts import build_prompt

    context = getattr(shape, "n_ctx", None)
    if context is None or not docs:
        return
    check_prompts(docs if regions else docs[:1],
                  lambda d: build_prompt(tokenizer, d["document"], max_tokens=context - max_new_tokens),
                  room_flag="--max-new-tokens", regions=regions)
