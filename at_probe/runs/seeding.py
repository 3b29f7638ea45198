"""Seeded random draws of the placebo controls, one draw per document.

A placebo that draws once for a whole run (the same random heads or windows for every
document) is a single sample of the control: the bootstrap over documents cannot see how much
the result depends on that draw. Every placebo in at_probe therefore draws per document. The
transition placebo's windows and the emphasis placebo's random heads draw here, from a generator
keyed by the placebo's seed, where in the model the draw is used (layer, span) and the
document's own prompt token ids. (The emphasis span placebo and the calibration placebo drew per
document before this module existed, with generators seeded by a crc32 of the prompt's ids;
they keep that seeding so that their committed runs stay reproducible.) The same document gets
the same draw in any batch, under any padding and in any run; another seed gives independent
draws, so a report can pool several seeds (``analyses/xsum_experiment.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def prompt_digest(ids: Sequence[int] | torch.Tensor) -> str:
    """Hex sha256 of a prompt's token ids (as int64): the document's identity in its draws."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return hashlib.sha256(torch.tensor(values, dtype=torch.int64).numpy().tobytes()).hexdigest()


def draw_generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by hashing ``seed`` and ``keys`` together.

    Hashing (rather than adding multiples of primes) keeps every distinct ``(seed, *keys)``
    an independent stream: no two layers, spans or documents share a draw by arithmetic accident.
    """
    text = "\x1f".join(str(k) for k in (seed, *keys))
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)
    return torch.Generator().manual_seed(value)
