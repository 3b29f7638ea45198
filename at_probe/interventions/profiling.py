"""Head profiling (PASTA's "model profiling", Zhang et al. 2024): edit one head at a time on
development documents, rank the heads by the change of the reference's NLL, keep the best.

Any intervention that can act on one head serves (``profile_heads`` takes a factory): PASTA-style
emphasis (``at_probe.interventions.emphasis``) and the sink edits, whose authors also search
heads one at a time (ACT by accuracy, ZeroTuning by hand).

Example:
    >>> from at_probe.interventions.profiling import profile_heads, rank_heads, top_heads
    >>> deltas = profile_heads(model, prompt, reference_ids,
    ...                        lambda layer, head: SinkScaling(2.0, head_config={layer: (head,)}))
    >>> top_heads(rank_heads(deltas), 8)            # {layer: heads} of the 8 best heads
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from at_probe.models.prompts import Prompt


def profile_heads(
    model: Any,
    prompt: Prompt,
    reference: Sequence[int],
    edit_for: Callable[[int, int], Any],
    *,
    layers: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[int, int], float]:
    """Head profiling on one document: the reference's NLL change when each head alone is edited.

    One unedited pass keeps the residual stream entering every block; editing head ``(l, h)``
    changes nothing below block ``l``, so its pass replays blocks ``l ..`` only
    (``at_probe.models.blocks``), exactly equal to a full pass.

    Args:
        model: a ``TransformerBridge``.
        prompt: the document's prompt; ``reference``: the reference summary's token ids
            (teacher-forced after the prompt).
        edit_for: ``(layer, head) ->`` an intervention that edits that head of that layer only
            (e.g. ``EmphasisSteering({layer: (head,)})``); its hooks get ``prompts=[prompt]``.
        layers: the layers whose heads are profiled (default every layer; ACT searches ``2 .. L-2``).
        progress: called with 1 after each head.

    Returns:
        ``(layer, head) -> NLL(edited) - NLL(unedited)`` in nats/token of the reference.
    """
    from at_probe.models.blocks import block_inputs, run_blocks

    t = len(prompt)
    tokens = torch.tensor([list(prompt.ids) + list(reference)], device=model.cfg.device)
    targets = tokens[0, t:, None]

    def nll(logits: Tensor) -> float:
        logp = logits[0, t - 1 : -1].float().log_softmax(-1)
        return float(-logp.gather(-1, targets).mean())

    inputs, kwargs, logits = block_inputs(model, tokens)
    base = nll(logits)
    deltas = {}
    for layer in range(int(model.cfg.n_layers)) if layers is None else layers:
        for head in range(int(model.cfg.n_heads)):
            edit = edit_for(layer, head)
            with model.hooks(fwd_hooks=edit.hooks(model, prompts=[prompt])), torch.inference_mode():
                deltas[(layer, head)] = nll(run_blocks(model, inputs[layer], layer, kwargs)) - base
            if progress is not None:
                progress(1)
    return deltas


def rank_heads(deltas: Mapping[tuple[int, int], float]) -> list[dict[str, Any]]:
    """Heads sorted best first by their profiling score: ``[{"layer", "head", "delta"}]``.

    Args:
        deltas: ``(layer, head)`` -> development loss with that head alone edited minus the
            loss unsteered (e.g. the mean ``summary_nll`` change); lower is better. Ties go to
            the lower layer, then head.
    """
    rows = [{"layer": int(l), "head": int(h), "delta": float(d)} for (l, h), d in deltas.items()]
    return sorted(rows, key=lambda r: (r["delta"], r["layer"], r["head"]))


def top_head_config(rankings: Mapping[str, Any] | None, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A setting's ``head_config`` from a development profile of rankings (``{name: ranking}``):
    ``{}`` without a ``top`` key, else the ``top`` best heads of ``rankings[name]``.

    Raises:
        ValueError: ``top`` given and the profile has no ``name`` ranking, or ``top`` outside it.
    """
    if "top" not in values:
        return {}
    if not rankings or name not in rankings:
        raise ValueError(f"the sink head profile has no {name!r} ranking")
    return {"head_config": top_heads(rankings[name], values["top"])}


def top_heads(ranking: Sequence[Mapping[str, Any]], k: int) -> dict[int, tuple[int, ...]]:
    """The ``k`` best heads of a ``profile_heads`` ranking as a ``{layer: heads}`` head config.

    Raises:
        ValueError: ``k`` outside ``1 .. len(ranking)``.
    """
    if not 1 <= k <= len(ranking):
        raise ValueError(f"k must be in 1..{len(ranking)}, got {k}")
    config: dict[int, list[int]] = {}
    for row in ranking[:k]:
        config.setdefault(int(row["layer"]), []).append(int(row["head"]))
    return {l: tuple(sorted(h)) for l, h in sorted(config.items())}
