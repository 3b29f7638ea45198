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
"""

from __future__ import annotations

from typing import Any

import torch

from at_probe.flow.region import RegionProbe
from at_probe.longctx.tasks import Built


def score(model: Any, built: Built, intervention: Any | None) -> dict[str, Any]:
    """Scores of one built prompt under one intervention (None: the baseline); module docstring."""
    prompt, answer = built.prompt, built.answer_ids
    n = len(prompt)
    ids = torch.tensor([[*prompt.ids, *answer]], device=model.cfg.device)
    probe = RegionProbe.for_model(model, row=n - 1, spans=built.needles)
    hooks = [] if intervention is None else intervention.hooks(model, prompts=[prompt])
    with torch.inference_mode():
        logits = model.run_with_hooks(ids, fwd_hooks=hooks + probe.hooks())
    logprobs = logits[0, n - 1 : n - 1 + len(answer)].float().log_softmax(-1).cpu()
    target = torch.tensor(answer)
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
    }
