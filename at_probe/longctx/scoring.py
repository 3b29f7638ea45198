"""Scoring a retrieval prompt: exact match and log-probability of the answer, and the needle's
share of the last prompt token's attention, in one teacher-forced pass.

One forward pass over ``prompt + answer`` with the setting's hooks (the prompt's rows as the
prompt, the answer's rows as generated tokens, as in ``generate``) gives:

* ``exact`` (primary): every answer token is the argmax at its position. By induction this is
  exactly "greedy decoding after the prompt starts with the answer's tokens" (each greedy step
  then conditions on the same tokens as the teacher-forced row), at the cost of one pass;
  ``tests/integration/test_longctx.py`` checks it against ``generate``. The pass unembeds only
  the rows that predict the answer (``logits_to_keep``: a tenth of a 2k-token pass's time).
* ``logprob``: the answer's teacher-forced log-probability (nats, summed over its tokens).
* ``needle_mass`` / ``needle_flow``: per layer, the mean over heads of the last prompt token's
  attention mass on the target needles and its value-weighted flow from them
  (``at_probe.flow.region.RegionProbe``), seen after the setting's edit.
* ``needle_knockout`` (with ``knockout=True``): per layer, the causal map's estimate of the
  change in ``logprob`` (nats) if the target needles were knocked out at that layer (every row
  after a needle loses its attention to it, rows renormalised as in ``at_probe.flow.knockout``):
  attribution patching, first order, at the edited pass (``at_probe.flow.attribution``); summed
  over layers, the first-order estimate for knocking it out everywhere. Negative: the answer
  leans on the needle. ``needle_knockout_exact``: the exact change when it is knocked out at
  every layer (one more forward pass), against which that sum can be judged. Together about
  three to four times the scoring pass's time (a checkpointed backward pass and a forward).

Each pass gets the setting's hooks afresh, so afterwards the intervention's ``last_report()``
describes the last pass made (the exact knockout's, or the reply's generation), not the scored
one (the bench reads no report).

``reply`` scores a generated reply instead, as RULER does (Hsieh et al. 2024, its
``string_match_all``): greedy decoding after the prompt, and the fraction of the answer's items
the reply holds anywhere. It is the score that can tell conditions apart on ``vt``, whose
replies never open with the answer (docs/longctx.md, "What ``exact`` measures").
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from at_probe.flow.attribution import pattern_gradients, span_knockout_inner_products
from at_probe.flow.knockout import knockout_hooks
from at_probe.flow.region import RegionProbe
from at_probe.longctx.tasks import Built, answer_items

DECIMALS = {"logprob": 5, "needle_mass": 6, "needle_flow": 5, "needle_knockout": 6, "needle_knockout_exact": 5}
"""Decimals each number of a record is rounded to (the check of a rerun allows one unit of the last)."""


def score(model: Any, built: Built, intervention: Any | None, *, knockout: bool = False) -> dict[str, Any]:
    """Scores of one built prompt under one intervention (None: the baseline); module docstring."""
    if knockout and torch.is_inference_mode_enabled():  # the estimate takes gradients
        with torch.inference_mode(False):
            return score(model, built, intervention, knockout=True)
    prompt, answer = built.prompt, built.answer_ids
    n = len(prompt)
    ids = torch.tensor([[*prompt.ids, *answer]], device=model.cfg.device)
    probe = RegionProbe.for_model(model, row=n - 1, spans=built.needles)
    target = torch.tensor(answer)

    def edits() -> list:  # fresh hooks for each pass
        return [] if intervention is None else intervention.hooks(model, prompts=[prompt])

    if knockout:
        logits, causal = _knockout_scores(model, ids, n, target, built.needles, edits, probe.hooks())
        rows = logits[0, n - 1 : n - 1 + len(answer)]
    else:
        causal = {}
        with torch.inference_mode():  # the unembedding only for the rows that predict the answer
            logits = model.run_with_hooks(ids, fwd_hooks=edits() + probe.hooks(), logits_to_keep=len(answer) + 1)
        rows = logits[0, : len(answer)]
    logprobs = rows.float().log_softmax(-1).cpu()
    greedy = logprobs.argmax(-1)
    right = (greedy == target).long()
    assert probe.flow is not None
    return {
        "exact": bool(right.all()),
        "logprob": round(float(logprobs.gather(-1, target[:, None]).sum()), DECIMALS["logprob"]),
        "tokens_right": int(right.cumprod(0).sum()),
        "greedy": model.tokenizer.decode(greedy.tolist()),
        "prompt_tokens": n,
        "answer_tokens": len(answer),
        "needle_mass": [round(float(v), DECIMALS["needle_mass"]) for v in probe.mass.mean(-1)],
        "needle_flow": [round(float(v), DECIMALS["needle_flow"]) for v in probe.flow.mean(-1)],
        **causal,
    }


def reply(model: Any, built: Built, intervention: Any | None, max_new_tokens: int) -> dict[str, Any]:
    """The greedy reply after the prompt (which ends with the answer prefix) under a fresh copy
    of the setting's hooks, with the KV cache, cut at the first special token (SmolLM2's end of
    turn, or any other the tokenizer names): ``reply`` (its text), ``reply_length`` (its tokens),
    ``reply_ended`` (whether a special token ended it within ``max_new_tokens``: a reply that did
    not was cut by the limit) and ``reply_match``, the fraction of the answer's items
    (``answer_items``: the variables of a ``vt`` chain, else the value) the reply contains,
    ignoring case (RULER's ``string_match_all``; a key inside a longer number counts, as
    there). In ``[0, 1]``.
    """
    prompt = built.prompt
    edit = nullcontext() if intervention is None else intervention.applied(model, prompts=[prompt])
    with edit, torch.inference_mode():
        out = model.generate(prompt.tensor(model.cfg.device), max_new_tokens=max_new_tokens, do_sample=False,
                             stop_at_eos=True, verbose=False)
    new = out[0, len(prompt) :].tolist()
    special = set(model.tokenizer.all_special_ids)
    end = next((i for i, t in enumerate(new) if t in special), None)
    text = model.tokenizer.decode(new[:end])
    items = answer_items(built.spec)
    return {"reply": text, "reply_length": len(new[:end]), "reply_ended": end is not None,
            "reply_match": sum(i.lower() in text.lower() for i in items) / len(items)}


def _answer_logprob(logits: torch.Tensor, n: int, target: torch.Tensor) -> torch.Tensor:
    """The answer's log-probability (nats, summed over its tokens) from a whole pass's logits."""
    rows = logits[0, n - 1 : n - 1 + len(target)].float().log_softmax(-1)
    return rows.gather(-1, target.to(logits.device)[:, None]).sum()


def _knockout_scores(model: Any, ids: torch.Tensor, n: int, target: torch.Tensor, needles: list[tuple[int, int]],
                     edits: Callable[[], list], probe_hooks: list) -> tuple[torch.Tensor, dict[str, Any]]:
    """The scoring pass's logits, and ``needle_knockout`` (per layer, first order) and
    ``needle_knockout_exact`` (every layer at once, one more pass) for the target needles."""
    keys = torch.tensor([k for a, b in needles for k in range(a, b)], device=ids.device)
    ends = torch.tensor([b for a, b in needles for _ in range(a, b)], device=ids.device)
    if len(set(keys.tolist())) != len(keys):
        raise ValueError(f"needle spans {needles} overlap")
    effects = torch.zeros(int(model.cfg.n_layers))

    def reduce(layer: int, pattern: torch.Tensor, grad: torch.Tensor, first: int) -> None:
        effects[layer] += span_knockout_inner_products(pattern[0], grad[0], keys, ends, first_row=first).sum().cpu()

    logits, _ = pattern_gradients(model, ids, lambda out: _answer_logprob(out, n, target), reduce,
                                  edits=edits(), fwd_hooks=probe_hooks)
    base = _answer_logprob(logits, n, target)
    layers = range(int(model.cfg.n_layers))
    knocks = [pair for start, end in needles for pair in knockout_hooks(start, end, layers)]
    with torch.inference_mode():
        knocked = _answer_logprob(model.run_with_hooks(ids, fwd_hooks=edits() + knocks), n, target)
    return logits, {"needle_knockout": [round(float(v), DECIMALS["needle_knockout"]) for v in effects],
                    "needle_knockout_exact": round(float(knocked - base), DECIMALS["needle_knockout_exact"])}
