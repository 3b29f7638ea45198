"""Scoring a retrieval prompt: exact match and log-probability of the answer, and the needle's
share of the last prompt token's attention, in one teacher-forced pass.

One forward pass over ``prompt + answer`` with the setting's hooks (the prompt's rows as the
prompt, the answer's rows as generated tokens, as in ``generate``) gives:

* ``exact`` (primary): every answer token is the argmax at its position. By induction this is
  exactly "greedy decoding after the prompt starts with the answer's tokens" (each greedy step
  then conditions on the same tokens as the teacher-forced row), at the cost of one pass;
  ``tests/integration/test_longctx.py`` checks it against ``generate``.
* ``logprob``: the answer's teacher-forced log-probability (nats, summed over its tokens).
* ``needle_mass`` / ``needle_flow``: per layer, the mean over heads of the last prompt token's
  attention mass on the target needles and its value-weighted flow from them
  (``at_probe.flow.region.RegionProbe``), seen after the setting's edit.
* ``needle_knockout`` (with ``knockout=True``): per layer, the causal map's estimate of the
  change in ``logprob`` (nats) if the target needles were knocked out at that layer (every row
  after a needle loses its attention to it, rows renormalised as in ``at_probe.flow.knockout``):
  attribution patching, first order, at the edited pass (``at_probe.flow.attribution``); summed
  over layers, the estimate for knocking it out everywhere. Negative: the answer leans on the
  needle. It adds a checkpointed backward pass (about three times the scoring pass's time).
"""

from __future__ import annotations

from typing import Any

import torch

from at_probe.flow.attribution import pattern_gradients, span_knockout_inner_products
from at_probe.flow.region import RegionProbe
from at_probe.longctx.tasks import Built


def score(model: Any, built: Built, intervention: Any | None, *, knockout: bool = False) -> dict[str, Any]:
    """Scores of one built prompt under one intervention (None: the baseline); module docstring."""
    prompt, answer = built.prompt, built.answer_ids
    n = len(prompt)
    ids = torch.tensor([[*prompt.ids, *answer]], device=model.cfg.device)
    probe = RegionProbe.for_model(model, row=n - 1, spans=built.needles)
    hooks = [] if intervention is None else intervention.hooks(model, prompts=[prompt])
    target = torch.tensor(answer)
    if knockout:
        logits, effects = _with_knockout_estimate(model, ids, n, target, built.needles, hooks, probe.hooks())
    else:
        with torch.inference_mode():
            logits = model.run_with_hooks(ids, fwd_hooks=hooks + probe.hooks())
    logprobs = _answer_logprobs(logits, n, len(answer)).cpu()
    greedy = logprobs.argmax(-1)
    right = (greedy == target).long()
    assert probe.flow is not None
    return {
        "exact": bool(right.all()),
        "logprob": round(float(logprobs.gather(-1, target[:, None]).sum()), 5),
        "tokens_right": int(right.cumprod(0).sum()),
        "greedy": model.tokenizer.decode(greedy.tolist()),
        "prompt_tokens": n,
        "answer_tokens": len(answer),
        "needle_mass": [round(float(v), 6) for v in probe.mass.mean(-1)],
        "needle_flow": [round(float(v), 5) for v in probe.flow.mean(-1)],
        **({"needle_knockout": [round(float(v), 6) for v in effects]} if knockout else {}),
    }


def _answer_logprobs(logits: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """Log-probabilities ``[answer token, vocab]`` of the rows predicting the answer."""
    return logits[0, n - 1 : n - 1 + length].float().log_softmax(-1)


def _with_knockout_estimate(model: Any, ids: torch.Tensor, n: int, target: torch.Tensor,
                            needles: list[tuple[int, int]], edits: list, probe_hooks: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The pass's logits and, per layer, the first-order change in the answer's log-probability
    from knocking the needles out (``needle_knockout``)."""
    keys = torch.tensor([k for a, b in needles for k in range(a, b)], device=ids.device)
    ends = torch.tensor([b for a, b in needles for _ in range(a, b)], device=ids.device)
    effects = torch.zeros(int(model.cfg.n_layers))

    def reduce(layer: int, pattern: torch.Tensor, grad: torch.Tensor, first: int) -> None:
        effects[layer] += span_knockout_inner_products(pattern[0], grad[0], keys, ends, first_row=first).sum().cpu()

    def logprob(logits: torch.Tensor) -> torch.Tensor:
        return _answer_logprobs(logits, n, len(target)).gather(-1, target.to(logits.device)[:, None]).sum()

    logits, _ = pattern_gradients(model, ids, logprob, reduce, edits=edits, fwd_hooks=probe_hooks)
    return logits, effects
