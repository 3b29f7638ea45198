"""XSum data: the paper's release format, the held-out split, prompts.

The release accompanying arXiv 2307.13365 is a JSON list of records with at least
``document``, ``summary`` and ``id`` (see ``../shared/data/xsum-at-release/README.md``).
Files may be gzipped (``.json.gz``) or plain JSON.

Example:
    >>> from at_probe.xsum import load_records, is_heldout
    >>> recs = load_records("../shared/data/xsum-at-release/token_800_evaluation.json.gz")
    >>> held = [r for r in recs if is_heldout(r["id"])]
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from at_probe.prompts import build_prompts, continuation_ids

if TYPE_CHECKING:
    from at_probe.sweep import FunctionWorker

BUCKETS: tuple[str, ...] = ("800", "1200", "1600", "1900")
"""The release's length buckets (approximate LLaMA token counts)."""


def is_heldout(doc_id: str | int) -> bool:
    """Whether an XSum document is held out from the tiny model's training.

    The rule is ``int(id) % 4 == 0``: about a quarter of the release, used for every
    evaluation of the embedded tiny model and never seen in its training.
    """
    return int(doc_id) % 4 == 0


def is_development(doc_id: str | int) -> bool:
    """Whether a document may be used to choose settings (``int(id) % 4 != 0``, never the test)."""
    return not is_heldout(doc_id)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a release file (``.json`` or ``.json.gz``) into a list of records.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON list of records with ``document`` and ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such XSum file: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            records = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "document" in r and "id" in r for r in records
    ):
        raise ValueError(f"{path}: expected a JSON list of records with 'document' and 'id'")
    return records


def bucket_file(data_dir: str | Path, bucket: str) -> Path:
    """Path of a bucket's release file, ``token_<B>_evaluation.json.gz``, in ``data_dir``."""
    return Path(data_dir) / f"token_{bucket}_evaluation.json.gz"


def release_files(data_dir: str | Path) -> dict[str, Path]:
    """Map each bucket (``"800"`` ...) to its release file in ``data_dir``; all must exist."""
    files = {b: bucket_file(data_dir, b) for b in BUCKETS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing release files: {', '.join(missing)}")
    return files


def load_all_documents(data_dir: str | Path) -> list[dict[str, Any]]:
    """All records of the four evaluation buckets, each tagged with its ``bucket``."""
    out = []
    for bucket, path in release_files(data_dir).items():
        for rec in load_records(path):
            out.append({**rec, "bucket": bucket})
    return out


# ---------------------------------------------------------------------------------------------
# Settings: "baseline", "paper:alpha=1,beta=0.5,k=2", "sra:threshold_len=200,...", "placebo:..."
# ---------------------------------------------------------------------------------------------


class SettingError(ValueError):
    """A setting string that cannot be parsed (the message names the bad part)."""


_PAPER_KEYS = {"alpha": float, "beta": float, "k": int}
_FIELD = {"k": "intervals_per_layer"}  # setting-string key -> transition field
_SETTING_KEYS: dict[str, dict[str, type]] = {
    "paper": _PAPER_KEYS,
    "placebo": {**_PAPER_KEYS, "seed": int},
    "sra": {"begin_length": int, "threshold_len": int, "elimi_factor_inter": float,
            "elimi_factor_outer": float, "strengthen_factor_inter": float,
            "strengthen_factor_outer": float, "dyna_div": int},
}


def parse_setting(text: str) -> tuple[str, Any]:
    """One setting string -> (canonical name, transition object or None for the baseline).

    Grammar: ``baseline`` | ``KIND:key=value,key=value`` with KIND ``paper`` / ``placebo``
    (keys ``alpha``, ``beta``, ``k``; placebo also ``seed``) or ``sra`` (keys of
    ``SRATransition``). Omitted keys take the class defaults.

    Raises:
        SettingError: unknown kind or key, a value of the wrong type, or invalid parameters.
    """
    from at_probe.transition import PaperTransition, PlaceboTransition, SRATransition

    text = text.strip()
    if text == "baseline":
        return "baseline", None
    kind, _, body = text.partition(":")
    if kind not in _SETTING_KEYS:
        raise SettingError(f"unknown setting {text!r}: expected baseline, paper:..., sra:... or placebo:...")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SETTING_KEYS[kind]:
            raise SettingError(f"bad parameter {item!r} in {text!r}; {kind} takes {', '.join(_SETTING_KEYS[kind])}")
        if key in params:
            raise SettingError(f"{key} is given twice in {text!r}")
        try:
            params[key] = _SETTING_KEYS[kind][key](value.strip())
        except ValueError:
            raise SettingError(f"bad value {value!r} for {key} in {text!r}") from None
    params = {_FIELD.get(k, k): v for k, v in params.items()}
    try:
        cls = {"paper": PaperTransition, "placebo": PlaceboTransition, "sra": SRATransition}[kind]
        transition = cls(**params)
    except ValueError as err:
        raise SettingError(f"invalid {text!r}: {err}") from None
    canonical = kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(_canonical_params(kind, transition).items()))
    return canonical, transition


def _canonical_params(kind: str, transition: Any) -> dict[str, Any]:
    """Every parameter of a setting (short names, defaults filled in), for its canonical name."""
    values = {k: getattr(transition, _FIELD.get(k, k)) for k in _SETTING_KEYS[kind]}
    return {k: v for k, v in values.items() if v is not None}


def parse_settings(text: str) -> dict[str, Any]:
    """``;``-separated settings -> {canonical name: transition or None}, in order, no duplicates."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, transition = parse_setting(part)
        if name in out:
            raise SettingError(f"setting {part!r} appears twice")
        out[name] = transition
    if not out:
        raise SettingError("no settings given")
    return out


# ---------------------------------------------------------------------------------------------
# Choosing settings on development documents (the experiment's only selection step)
# ---------------------------------------------------------------------------------------------

PAPER_EXAMPLE = "paper:alpha=1,beta=0.5,k=2"
"""The paper's own example setting."""

PAPER_GRID: tuple[str, ...] = tuple(
    f"paper:alpha={a},beta={b},k={k}"
    for a in (0.5, 1, 1.5) for b in (0.1, 0.3, 0.5, 0.8, 1.0, 1.5) for k in (1, 2, 3, 4)
)
"""The paper's grid: alpha x beta x K (72 settings)."""

SRA_CANDIDATES: tuple[str, ...] = (
    "sra:",  # the public defaults of the authors' code
    "sra:begin_length=5,threshold_len=50,elimi_factor_inter=0.5,elimi_factor_outer=0.5,"
    "strengthen_factor_inter=5,strengthen_factor_outer=5",  # the authors' worked example
)
"""The SRA settings of the development sweep: the defaults and the worked example."""

PLACEBO_SEED = 0


def development_sweep_settings() -> dict[str, Any]:
    """Baseline, the paper grid and the SRA candidates, by canonical name."""
    return parse_settings(";".join(("baseline", *PAPER_GRID, *SRA_CANDIDATES)))


def placebo_of(paper_setting: str, seed: int = PLACEBO_SEED) -> str:
    """The placebo twin (same rows and mass, random targets) of a paper setting string."""
    name, _ = parse_setting(paper_setting)
    if not name.startswith("paper:"):
        raise SettingError(f"{paper_setting!r} is not a paper setting")
    return parse_setting(f"placebo:{name.removeprefix('paper:')},seed={seed}")[0]


def select_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper and SRA settings with the lowest mean ``summary_nll`` on the development rows.

    Only documents scored under every setting count, so every mean is over the same documents.
    Ties go to the setting listed first (the grid's order).

    Args:
        rows: ``{"doc_id", "setting", "summary_nll"}`` records of the development sweep.

    Returns:
        ``{"paper": name, "sra": name, "n_documents": int, "mean_nll": {setting: float}}``.
    """
    import numpy as np

    by_setting: dict[str, dict[str, float]] = {}
    for r in rows:
        by_setting.setdefault(r["setting"], {})[r["doc_id"]] = float(r["summary_nll"])
    docs = set.intersection(*(set(v) for v in by_setting.values())) if by_setting else set()
    if not docs:
        raise ValueError("no document is scored under every development setting")
    mean = {name: float(np.mean([v[d] for d in sorted(docs)])) for name, v in by_setting.items()}

    def best(kind: str) -> str:
        names = [n for n in by_setting if n.startswith(kind + ":")]
        if not names:
            raise ValueError(f"the development sweep has no {kind} setting")
        return min(names, key=lambda n: mean[n])

    return {"paper": best("paper"), "sra": best("sra"), "n_documents": len(docs), "mean_nll": mean}


def setting_roles(selection: dict[str, Any]) -> dict[str, str]:
    """The test run's settings by role: ``baseline``, ``paper_example``, ``paper_selected``,
    ``placebo_example``, ``placebo_selected``, ``sra_selected`` (a setting may fill two roles,
    e.g. when the selected paper setting is the paper's example)."""
    example = parse_setting(PAPER_EXAMPLE)[0]
    return {"baseline": "baseline", "paper_example": example, "paper_selected": selection["paper"],
            "placebo_example": placebo_of(example), "placebo_selected": placebo_of(selection["paper"]),
            "sra_selected": selection["sra"]}


def run_settings(selection: dict[str, Any]) -> list[str]:
    """The test run's settings: baseline, the paper's example, the selected paper setting,
    a placebo of each paper setting, and the selected SRA setting (no duplicates)."""
    return list(dict.fromkeys(setting_roles(selection).values()))


# ---------------------------------------------------------------------------------------------
# Generation and teacher-forced scoring (batched, left padding)
# ---------------------------------------------------------------------------------------------


def left_pad(model: Any, rows: list[list[int]]) -> tuple[Any, Any]:
    """Left-padded ``(input_ids, attention_mask)`` tensors on the model's device."""
    import torch

    width = max(map(len, rows))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], device=model.cfg.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=model.cfg.device)
    return ids, mask


def prompt_limit(model: Any, max_prompt_tokens: int | None, room: int) -> int:
    """Most prompt tokens allowed: ``max_prompt_tokens`` (default the model's context) minus the
    ``room`` kept for what follows the prompt. ``summarise`` and ``reference_nll`` both use it
    with the same ``room``, so a document is cut the same way in both."""
    return (max_prompt_tokens or int(model.cfg.n_ctx)) - room


def summarise(model: Any, documents: list[str], transition: Any, *, max_new_tokens: int = 50,
              max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy continuations (new tokens only, cut at EOS) of each document's prompt.

    Prompts come from ``at_probe.prompts.build_prompt`` (the chat template when the tokenizer
    has one, else the paper's plain prompt), the document cut at its end to fit.

    The transition (or None) is active on each prompt's own rows at prefill. Rows of a batch
    get what they would get alone (left padding with an attention mask).
    """
    import torch

    prompts = build_prompts(model.tokenizer, documents, max_tokens=prompt_limit(model, max_prompt_tokens,
                                                                               max_new_tokens))
    input_ids, mask = left_pad(model, [list(p.ids) for p in prompts])
    ctx = contextlib.nullcontext() if transition is None else transition.applied(model)
    with ctx, torch.inference_mode():
        out = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             stop_at_eos=True, verbose=False)
    eos = model.tokenizer.eos_token_id
    texts = []
    for row in out[:, input_ids.shape[1] :].tolist():
        if eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return texts


def reference_nll(model: Any, documents: list[str], references: list[str], transition: Any,
                  *, max_new_tokens: int = 50, max_prompt_tokens: int | None = None) -> list[float]:
    """Teacher-forced mean NLL (nats/token) of each reference given its prompt, setting active.

    Prompts are cut exactly as ``summarise`` cuts them with the same ``max_new_tokens`` and
    ``max_prompt_tokens`` (``prompt_limit``), whatever the other references of the batch.
    The transition edits prompt rows only (``prompt_lengths``), never the reference's rows.

    Raises:
        ValueError: a prompt and its reference do not fit in ``max_prompt_tokens`` (the context).
    """
    import torch

    tok = model.tokenizer
    refs = [continuation_ids(tok, r) for r in references]
    limit = prompt_limit(model, max_prompt_tokens, max_new_tokens)
    prompts_ids = [list(p.ids) for p in build_prompts(model.tokenizer, documents, max_tokens=limit)]
    total = max_prompt_tokens or int(model.cfg.n_ctx)
    too_long = [i for i, (p, r) in enumerate(zip(prompts_ids, refs)) if len(p) + len(r) > total]
    if too_long:
        raise ValueError(f"references {too_long} do not fit after their prompts in {total} tokens; "
                         f"raise max_new_tokens above {max(len(refs[i]) for i in too_long)}")
    ids, mask = left_pad(model, [p + r for p, r in zip(prompts_ids, refs)])
    hooks = [] if transition is None else transition.hooks(model, prompt_lengths=[len(p) for p in prompts_ids])
    width = ids.shape[1]
    with torch.inference_mode():
        logits = model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks)
        out = []
        for i, ref in enumerate(refs):  # log-softmax only on the rows that predict the reference
            n = len(ref)
            logp = logits[i, width - n - 1 : width - 1].float().log_softmax(-1)
            out.append(float(-logp.gather(-1, ids[i, width - n :, None]).mean()))
    return out


# ---------------------------------------------------------------------------------------------
# Sweep workers (``at_probe.sweep``): load the model once, then compute units of documents
# ---------------------------------------------------------------------------------------------


def score_summary(output: str, record: dict[str, Any]) -> dict[str, Any]:
    """Judge-free measures of a summary against its release record (reference and document)."""
    from at_probe import text_metrics

    positions = text_metrics.source_positions(output, record["document"])
    return {
        **text_metrics.rouge(output, record["summary"]),
        "repetition_4gram": text_metrics.repetition_rate(output),
        "novel_bigrams": text_metrics.novel_bigram_share(output, record["document"]),
        "source_position_mean": sum(positions) / len(positions) if positions else None,
        "source_ngrams_matched": len(positions),
    }


@dataclass(frozen=True)
class SummaryWorkerFactory:
    """Worker of ``xsum_eval.py``: greedy summary, its scores and ``summary_nll`` per document.

    ``settings`` is the run's settings string (parsed again in each worker process).
    """

    model: str
    device: str | None
    settings: str
    max_new_tokens: int

    def __call__(self) -> FunctionWorker:
        from at_probe.loading import load_model, model_description
        from at_probe.sweep import FunctionWorker

        model = load_model(self.model, device=self.device)
        transitions = parse_settings(self.settings)

        def run(unit: Any) -> list[dict[str, Any]]:
            t0 = time.perf_counter()
            documents = [d["document"] for d in unit.docs]
            transition = transitions[unit.setting]
            outputs = summarise(model, documents, transition, max_new_tokens=self.max_new_tokens)
            nlls = reference_nll(model, documents, [d["summary"] for d in unit.docs], transition,
                                 max_new_tokens=self.max_new_tokens)
            seconds = (time.perf_counter() - t0) / len(unit.docs)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "output": o, **score_summary(o, d),
                     "summary_nll": nll, "wall_seconds": seconds} for d, o, nll in zip(unit.docs, outputs, nlls)]

        return FunctionWorker(model_description(model), run)


@dataclass(frozen=True)
class NLLWorkerFactory:
    """Worker of the development sweep (``xsum_select.py``): ``summary_nll`` per document."""

    model: str
    device: str | None
    max_new_tokens: int

    def __call__(self) -> FunctionWorker:
        from at_probe.loading import load_model, model_description
        from at_probe.sweep import FunctionWorker

        model = load_model(self.model, device=self.device)
        transitions = development_sweep_settings()

        def run(unit: Any) -> list[dict[str, Any]]:
            nlls = reference_nll(model, [d["document"] for d in unit.docs], [d["summary"] for d in unit.docs],
                                 transitions[unit.setting], max_new_tokens=self.max_new_tokens)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "summary_nll": nll}
                    for d, nll in zip(unit.docs, nlls)]

        return FunctionWorker(model_description(model), run)
