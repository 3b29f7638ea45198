"""Batched greedy summaries and teacher-forced NLL (left padding), and the sweep workers
that compute them per unit of documents."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from at_probe.models.prompts import build_prompts, continuation_ids
from at_probe.runs.errors import UsageError
from at_probe.xsum.metrics import score_summary
from at_probe.xsum.settings import development_sweep_settings, parse_settings

if TYPE_CHECKING:
    from at_probe.runs.sweep import FunctionWorker



# ---------------------------------------------------------------------------------------------
# Generation and teacher-forced scoring (batched, left padding)
# ---------------------------------------------------------------------------------------------


def left_pad(model: Any, rows: list[list[int]]) -> tuple[Any, Any]:
    """Left-padded ``(input_ids, attention_mask)`` long tensors ``[len(rows), longest row]`` on
    the model's device; no rows give two ``[0, 0]`` tensors.

    Raises:
        ValueError: an empty row (it would attend to nothing).
    """
    import torch

    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ValueError(f"rows {empty} are empty: every sequence needs at least one token")
    width = max(map(len, rows), default=0)
    pad = model.tokenizer.pad_token_id
    shape = (len(rows), width)  # kept for no rows, where torch.tensor([]) would be 1-d
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], dtype=torch.long, device=model.cfg.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], dtype=torch.long,
                        device=model.cfg.device)
    return ids.reshape(shape), mask.reshape(shape)


def prompt_limit(model: Any, max_prompt_tokens: int | None, room: int) -> int:
    """Most prompt tokens allowed: ``max_prompt_tokens`` (default the model's context) minus the
    ``room`` kept for what follows the prompt. ``summarise`` and ``reference_nll`` both use it
    with the same ``room``, so a document is cut the same way in both.

    Raises:
        ValueError: ``max_prompt_tokens`` below 1 (None, not 0, means the model's context).
    """
    return _context(model, max_prompt_tokens) - room


def _context(model: Any, max_prompt_tokens: int | None) -> int:
    """``max_prompt_tokens``, or the model's context when None."""
    if max_prompt_tokens is None:
        return int(model.cfg.n_ctx)
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be at least 1 (None for the model's context), "
                         f"got {max_prompt_tokens}")
    return max_prompt_tokens


def _same_length(documents: Sequence[str], references: Sequence[str]) -> None:
    if len(documents) != len(references):
        raise ValueError(f"{len(documents)} documents but {len(references)} references: "
                         "one reference per document")


def summarise(model: Any, documents: list[str], transition: Any, *, max_new_tokens: int = 50,
              max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy continuations (new tokens only, cut at EOS) of each document's prompt.

    Prompts come from ``at_probe.models.prompts.build_prompt`` (the chat template when the tokenizer
    has one, else the paper's plain prompt), the document cut at its end to fit.

    The intervention (a transition, an alternative of ``at_probe.interventions.base``, or None) gets
    the batch's prompts and acts on each prompt's own rows. Rows of a batch get what they would
    get alone (left padding with an attention mask). No documents give ``[]``.
    """
    import torch

    if not documents:
        return []
    prompts = build_prompts(model.tokenizer, documents, max_tokens=prompt_limit(model, max_prompt_tokens,
                                                                               max_new_tokens))
    input_ids, mask = left_pad(model, [list(p.ids) for p in prompts])
    ctx = contextlib.nullcontext() if transition is None else transition.applied(model, prompts=prompts)
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
                  *, max_new_tokens: int = 50, max_prompt_tokens: int | None = None,
                  names: Sequence[str] | None = None) -> list[float]:
    """Teacher-forced mean NLL (nats/token) of each reference given its prompt, setting active.

    Prompts are cut exactly as ``summarise`` cuts them with the same ``max_new_tokens`` and
    ``max_prompt_tokens`` (``prompt_limit``), whatever the other references of the batch.
    A transition edits prompt rows only, never the reference's; the alternatives treat the
    reference rows as they treat generated tokens. No documents give ``[]``. ``names`` (the
    documents' ids) name the references in errors; by default, their positions in the batch.

    Raises:
        ValueError: ``documents`` and ``references`` differ in length.
        UsageError (a ValueError): a reference without tokens (empty or whitespace: its NLL is
            undefined), or a prompt and its reference that do not fit in ``max_prompt_tokens``
            (the context): the data's fault, which a command reports in one line.
    """
    import torch

    _same_length(documents, references)
    if not documents:
        return []
    tok = model.tokenizer
    refs = [continuation_ids(tok, r) for r in references]
    shown = list(names) if names is not None else list(range(len(refs)))
    empty = [shown[i] for i, r in enumerate(refs) if not r]
    if empty:
        raise UsageError(f"references {empty} have no tokens: a teacher-forced NLL needs at least one")
    limit = prompt_limit(model, max_prompt_tokens, max_new_tokens)
    prompts = build_prompts(model.tokenizer, documents, max_tokens=limit)
    prompts_ids = [list(p.ids) for p in prompts]
    total = _context(model, max_prompt_tokens)
    too_long = [i for i, (p, r) in enumerate(zip(prompts_ids, refs)) if len(p) + len(r) > total]
    if too_long:
        need = max(len(refs[i]) for i in too_long)
        raise UsageError(f"references {[shown[i] for i in too_long]} do not fit after their prompts in {total} "
                         f"tokens; a run with max_new_tokens above {need} fits them")
    ids, mask = left_pad(model, [p + r for p, r in zip(prompts_ids, refs)])
    hooks = [] if transition is None else transition.hooks(model, prompts=prompts)
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
# Sweep workers (``at_probe.runs.sweep``): load the model once, then compute units of documents
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SummaryWorkerFactory:
    """Worker of ``xsum_eval.py``: greedy summary, its scores and ``summary_nll`` per document.

    ``settings`` is the run's settings string (parsed again in each worker process, with the
    development ``profiles`` the alternatives need); ``rouge_tokenizer`` as ``score_summary``'s;
    ``attention_rows``: chunked attention (``at_probe.models.chunked``: the same summaries, NLLs
    within about 1e-6), noted in each record (``attention_rows``) when set.
    """

    model: str
    device: str | None
    settings: str
    max_new_tokens: int
    profiles: dict[str, Any] | None = None
    rouge_tokenizer: str = "default"
    attention_rows: int | None = None

    def __call__(self) -> FunctionWorker:
        from at_probe.models.loading import load_model, model_description
        from at_probe.runs.sweep import FunctionWorker

        model = load_model(self.model, device=self.device, attention_rows=self.attention_rows)
        chunked = {} if self.attention_rows is None else {"attention_rows": self.attention_rows}
        transitions = parse_settings(self.settings, self.profiles)

        def run(unit: Any) -> list[dict[str, Any]]:
            t0 = time.perf_counter()
            documents = [d["document"] for d in unit.docs]
            transition = transitions[unit.setting]
            outputs = summarise(model, documents, transition, max_new_tokens=self.max_new_tokens)
            nlls = reference_nll(model, documents, [d["summary"] for d in unit.docs], transition,
                                 max_new_tokens=self.max_new_tokens, names=unit.doc_ids)
            seconds = (time.perf_counter() - t0) / len(unit.docs)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "output": o,
                     **score_summary(o, d, rouge_tokenizer=self.rouge_tokenizer),
                     "summary_nll": nll, "wall_seconds": seconds, **chunked}
                    for d, o, nll in zip(unit.docs, outputs, nlls)]

        return FunctionWorker(model_description(model), run)


@dataclass(frozen=True)
class NLLWorkerFactory:
    """Worker of the development sweeps (``xsum_select.py``): ``summary_nll`` per document.

    ``settings`` (with ``profiles``) names the settings; None means the transitions' sweep
    (``development_sweep_settings``).
    """

    model: str
    device: str | None
    max_new_tokens: int
    settings: str | None = None
    profiles: dict[str, Any] | None = None

    def __call__(self) -> FunctionWorker:
        from at_probe.models.loading import load_model, model_description
        from at_probe.runs.sweep import FunctionWorker

        model = load_model(self.model, device=self.device)
        transitions = (development_sweep_settings() if self.settings is None
                       else parse_settings(self.settings, self.profiles))

        def run(unit: Any) -> list[dict[str, Any]]:
            nlls = reference_nll(model, [d["document"] for d in unit.docs], [d["summary"] for d in unit.docs],
                                 transitions[unit.setting], max_new_tokens=self.max_new_tokens,
                                 names=unit.doc_ids)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "summary_nll": nll}
                    for d, nll in zip(unit.docs, nlls)]

        return FunctionWorker(model_description(model), run)
