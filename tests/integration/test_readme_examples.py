"""The README's REPL section runs as written (SmolLM2, with fewer new tokens to stay quick)."""

from __future__ import annotations

import re
import warnings

from tests.conftest import REPO, require_smollm2

FEW_TOKENS = 3


def repl_blocks() -> list[str]:
    """The ```python blocks of the README's ``## REPL`` section, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## REPL\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_repl_section_has_the_recipes():
    blocks = repl_blocks()
    assert any("left_pad" in b and "attention_mask=mask" in b for b in blocks), "no left-padded batch recipe"
    assert any(b.count("probe_pass(") >= 3 and "PlaceboTransition" in b for b in blocks), \
        "no recipe comparing conditions with the probe and a placebo"


def test_readme_repl_blocks_run(smollm2_model, monkeypatch, capsys):
    import at_probe as ap

    require_smollm2()
    monkeypatch.setattr(ap, "load_model", lambda *a, **k: smollm2_model)  # the session's copy
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. a probe's pass ignored: a README bug
        for block in repl_blocks():
            exec(re.sub(r"max_new_tokens=\d+", f"max_new_tokens={FEW_TOKENS}", block), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert "paper {" in out and "placebo {" in out
    texts, prompts = namespace["texts"], namespace["prompts"]
    assert len(texts) == len(prompts) == 2 and all(isinstance(t, str) for t in texts)
    assert namespace["flow"].final_token_profile.shape[0] == smollm2_model.cfg.n_layers
