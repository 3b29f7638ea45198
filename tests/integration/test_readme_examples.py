"""The README's REPL section and the recipes of docs/usage.md run as written (SmolLM2, with fewer
new tokens to stay quick)."""

from __future__ import annotations

import re
import warnings

import pytest

from tests.conftest import REPO, require_smollm2

FEW_TOKENS = 3


pytestmark = pytest.mark.slow  # SmolLM2 or whole pipelines: 15-40 s a test on 2 CPU cores


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def repl_blocks() -> list[str]:
    """The ```python blocks of the README's ``## REPL`` section, in order."""
    readme = (REPO / "README.md").read_text()
    return python_blocks(readme.split("\n## REPL\n", 1)[1].split("\n## ", 1)[0])


def usage_blocks() -> list[str]:
    """The ```python blocks of docs/usage.md, in order (one session, like the README's)."""
    return python_blocks((REPO / "docs" / "usage.md").read_text())


def test_the_recipes_are_in_the_readme_or_the_usage_page():
    blocks = repl_blocks() + usage_blocks()
    assert any("left_pad" in b and "attention_mask=mask" in b for b in blocks), "no left-padded batch recipe"
    assert any(b.count("probe_pass(") >= 3 and "PlaceboTransition" in b for b in blocks), \
        "no recipe comparing conditions with the probe and a placebo"


def run_blocks(blocks: list[str]) -> dict:
    """Exec ``blocks`` in order in one namespace, with UserWarnings as errors (e.g. a probe's
    pass ignored: a documentation bug)."""
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for block in blocks:
            quick = re.sub(r"max_new_tokens=\d+", f"max_new_tokens={FEW_TOKENS}", block)
            exec(quick, namespace)  # noqa: S102
    return namespace


@pytest.fixture
def session_model(smollm2_model, monkeypatch):
    """``ap.load_model`` in the examples returns the session's copy of SmolLM2."""
    import at_probe as ap

    require_smollm2()
    monkeypatch.setattr(ap, "load_model", lambda *a, **k: smollm2_model)
    return smollm2_model


def test_readme_repl_blocks_run(session_model, capsys):
    blocks = repl_blocks()
    assert blocks, "the README's REPL section has no python block"
    namespace = run_blocks(blocks)
    assert capsys.readouterr().out.strip(), "the REPL example printed nothing"
    assert namespace["flow"].final_token_profile.shape[0] == session_model.cfg.n_layers


def test_usage_page_blocks_run(session_model, capsys):
    namespace = run_blocks(usage_blocks())
    out = capsys.readouterr().out
    assert "paper {" in out and "placebo {" in out
    texts, prompts = namespace["texts"], namespace["prompts"]
    assert len(texts) == len(prompts) == 2 and all(isinstance(t, str) for t in texts)
    assert namespace["flow"].final_token_profile.shape[0] == session_model.cfg.n_layers
