"""Loading: the embedded tiny Llama, HF parity, clear errors, the held-out split."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import at_probe as ap
from at_probe.xsum import is_heldout, load_all_documents
from tests.conftest import XSUM_DIR, require_shared

# Bridge and HF run the same eager float32 attention; only op ordering may differ.
LOGIT_ATOL = 1e-4


def test_tiny_model_is_a_hookable_llama_bridge(tiny_model):
    from transformer_lens.model_bridge import TransformerBridge

    assert isinstance(tiny_model, TransformerBridge)
    assert tiny_model.cfg.n_layers == 8
    assert "blocks.0.attn.hook_pattern" in tiny_model.hook_dict
    assert tiny_model.cfg.dtype == torch.float32
    assert not tiny_model.training
    assert tiny_model.tokenizer.padding_side == "left"


def test_tiny_checkpoint_is_small_safetensors():
    files = list(ap.TINY_MODEL_DIR.glob("*.safetensors"))
    assert files and not list(ap.TINY_MODEL_DIR.glob("*.bin"))
    assert sum(f.stat().st_size for f in files) <= 20 * 2**20


def test_bridge_logits_match_hf_eager(tiny_model, tiny_hf, sample_text):
    """Contract: the bridge's forward equals HF's eager forward to 1e-4 (float32)."""
    tokens = tiny_model.to_tokens(sample_text)
    with torch.inference_mode():
        ours = tiny_model(tokens)
        theirs = tiny_hf(tokens).logits
    err = (ours - theirs).abs().max().item()
    assert err < LOGIT_ATOL, f"max |bridge - HF| logit error {err:.2e}"


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        ap.load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        ap.load_model("./not/a/dir")


def test_directory_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ap.load_model(tmp_path)


def test_non_llama_config(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="gpt2"):
        ap.load_model(tmp_path)


def test_missing_tokenizer(tmp_path):
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ap.TINY_MODEL_DIR / name, tmp_path / name)
    with pytest.raises(ValueError, match="no tokenizer"):
        ap.load_model(tmp_path)


def test_local_directory_loads_like_tiny(tmp_path, tiny_model, sample_text):
    shutil.copytree(ap.TINY_MODEL_DIR, tmp_path / "ckpt")
    model = ap.load_model(tmp_path / "ckpt", device="cpu")
    tokens = tiny_model.to_tokens(sample_text[:500])
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), tiny_model(tokens))


def test_a_cached_hub_id_loads_while_the_hub_is_unreachable(unreachable_hub, tiny_model, sample_text):
    """Config, tokenizer and weights from the hub cache alone: without local_files_only,
    from_pretrained retried the hub for each file it lacks and took about 5 minutes."""
    import time
    from pathlib import Path

    snapshot = Path(unreachable_hub.HF_HUB_CACHE) / "models--someone--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(ap.TINY_MODEL_DIR, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    start = time.perf_counter()
    model = ap.load_model("someone/tiny-llama", device="cpu")
    assert time.perf_counter() - start < 60  # about 5 s
    tokens = tiny_model.to_tokens(sample_text[:500])
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens), tiny_model(tokens))


def test_heldout_split_rule_and_training_record():
    """Documents with int(id) % 4 == 0 are held out; the model card's counts follow that rule."""
    ids = ("0", "4", "37131104", 40, "1", "6", 35898483)
    assert [is_heldout(i) for i in ids] == [True, True, True, True, False, False, False]
    docs = load_all_documents(require_shared(XSUM_DIR))
    n_held = sum(int(d["id"]) % 4 == 0 for d in docs)
    assert len(docs) == 800 and 150 < n_held < 250
    record = json.loads((ap.TINY_MODEL_DIR / "training.json").read_text())
    assert (record["train_documents"], record["heldout_documents"]) == (len(docs) - n_held, n_held)
    assert record["ratio"] <= 0.8


def test_random_llama_has_the_asked_shape_and_is_seeded():
    import torch

    from at_probe.models.loading import random_llama

    small = dict(n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, d_mlp=256, vocab_size=8192, device="cpu")
    a, b, c = random_llama(seed=1, **small), random_llama(seed=1, **small), random_llama(seed=2, **small)
    assert (a.cfg.n_layers, a.cfg.d_model, a.cfg.n_heads, a.cfg.d_vocab) == (2, 128, 4, 8192)
    assert a.cfg.dtype == torch.float32
    toks = a.to_tokens("The harbour was sold.")
    with torch.inference_mode():
        la, lb, lc = a(toks), b(toks), c(toks)
    assert torch.equal(la, lb) and not torch.allclose(la, lc)
    assert "blocks.1.attn.hook_pattern" in a.hook_dict
