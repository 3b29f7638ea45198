"""Adaptive temperature on the tiny model against the paper's own function (batches, the cache
and chunked attention: test_alternatives, test_chunked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from at_probe.interventions.adaptive_temperature import AdaptiveTemperature, adaptive_beta
from at_probe.models.names import pattern_hook, scores_hook

LAYER = 3


def adaptive_temperature_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The paper's ``adaptive_temperature_softmax`` (Veličković et al., Figure 4), JAX to torch
    line by line, with numpy's ``polyval`` on the coefficients as printed."""
    original_probs = torch.softmax(logits, -1)
    poly_fit = np.array([-0.037, 0.481, -2.3, 4.917, -1.791])
    entropy = torch.sum(-original_probs * torch.log(original_probs + 1e-9), dim=-1, keepdim=True)
    fitted = torch.from_numpy(np.polyval(poly_fit, entropy.double().numpy())).float()
    beta = torch.where(entropy > 0.5, torch.maximum(fitted, torch.tensor(1.0)), torch.tensor(1.0))
    return torch.softmax(logits * beta, -1)


def test_matches_the_papers_function(tiny_model, sample_text):
    tokens = tiny_model.to_tokens(sample_text[:1500])
    seen = {}

    def keep(key):
        def fn(tensor, *, hook):
            seen[key] = tensor.detach().clone()
        return fn

    pairs = [(scores_hook(LAYER), keep("scores"))] + AdaptiveTemperature(layers=(LAYER,)).hooks(tiny_model) + \
        [(pattern_hook(LAYER), keep("pattern"))]
    with torch.inference_mode():
        tiny_model.run_with_hooks(tokens, fwd_hooks=pairs)
    expected = adaptive_temperature_softmax(seen["scores"])
    torch.testing.assert_close(seen["pattern"], expected)
    assert not torch.allclose(seen["pattern"], torch.softmax(seen["scores"], -1))


@pytest.mark.parametrize("keys, beta", [(1, 1.0), (2, 1.0), (3, 1.419), (7, 2.082), (148, 2.295)])
def test_beta_of_uniform_rows(keys, beta):
    """A uniform row over n keys has entropy log n: 0 and 0.69 nats keep beta 1 (below the
    threshold; under the clamp), 1.10, 1.95 and 5.00 nats give the quartic's value."""
    row = torch.zeros(1, 1, 1, keys)
    assert float(adaptive_beta(row)) == pytest.approx(beta, abs=1e-3)
