"""One prompt builder: chat template for a chat model, the paper's plain prompt otherwise, and
the parts located in tokens (so the probe's document regions are document tokens)."""

from __future__ import annotations

import pytest
import torch

from at_probe import ops
from at_probe.probe import FlowProbe
from at_probe.prompts import INSTRUCTION, build_prompt, prompt_style


def test_plain_prompt_is_bos_document_instruction(tiny_model, sample_text):
    tok = tiny_model.tokenizer
    p = build_prompt(tok, "The match ended in a draw.")
    assert prompt_style(tok) == "plain" and p.style == "plain"
    assert p.ids == tuple(tok("The match ended in a draw." + INSTRUCTION)["input_ids"])
    assert p.ids[0] == tok.bos_token_id and p.document[0] == 1
    assert p.parts["template"] == (1, 1), "no template in the plain style"


def test_chat_prompt_equals_the_template_rendering(smollm2_model, sample_text):
    tok = smollm2_model.tokenizer
    p = build_prompt(tok, sample_text)
    rendered = tok.apply_chat_template([{"role": "user", "content": sample_text + INSTRUCTION}],
                                       add_generation_prompt=True, tokenize=True)["input_ids"]
    assert p.style == "chat" and p.ids == tuple(rendered)
    start, end = p.document
    assert tok.decode(list(p.ids[start:end])) == sample_text
    assert tok.decode(list(p.ids[:start])).endswith("<|im_start|>user\n")
    assert tok.decode(list(p.ids[end:])) == INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_a_long_document_is_cut_at_its_end_and_keeps_template_and_instruction(request, model_name, sample_text):
    tok = request.getfixturevalue(model_name).tokenizer
    full = build_prompt(tok, sample_text)
    cut = build_prompt(tok, sample_text, max_tokens=len(full) - 100)
    assert len(cut) == len(full) - 100 and cut.dropped == 100
    assert cut.ids[: cut.document[1]] == full.ids[: full.document[1] - 100]
    assert cut.ids[cut.document[1]:] == full.ids[full.document[1]:]
    frame = len(full) - (full.document[1] - full.document[0])  # template and instruction tokens
    one = build_prompt(tok, sample_text, max_tokens=frame + 1)
    assert one.document[1] - one.document[0] == 1 and len(one) == frame + 1
    with pytest.raises(ValueError, match="no room"):
        build_prompt(tok, sample_text, max_tokens=frame)
    assert len(build_prompt(tok, "Hi")) == frame + len(tok("Hi", add_special_tokens=False)["input_ids"])


def test_a_reference_follows_each_prompt_style_without_a_stray_space(tiny_model, smollm2_model):
    """After the chat template's assistant header (a newline) the reference starts its own
    word; after the plain prompt's "above:" it is separated by a space."""
    from at_probe.prompts import continuation_ids

    chat, plain = smollm2_model.tokenizer, tiny_model.tokenizer
    assert continuation_ids(chat, "A town") == chat("A town", add_special_tokens=False)["input_ids"]
    assert continuation_ids(plain, "A town") == plain(" A town", add_special_tokens=False)["input_ids"]


def test_forcing_chat_on_a_tokenizer_without_template_is_refused(tiny_model):
    with pytest.raises(ValueError, match="chat template"):
        build_prompt(tiny_model.tokenizer, "text", style="chat")


def test_prompt_regions_label_the_parts():
    bounds, labels = ops.prompt_regions(100, 4, (20, 90))
    assert bounds.tolist() == [0, 1, 20, 38, 55, 72, 90, 100]
    assert labels == ["sink", "template", "doc 01", "doc 02", "doc 03", "doc 04", "instruction"]
    bounds, labels = ops.prompt_regions(50, 2, (1, 50))  # plain prompt, nothing after the document
    assert bounds.tolist() == [0, 1, 26, 50] and labels == ["sink", "doc 01", "doc 02"]
    with pytest.raises(ValueError, match="cannot be split"):
        ops.prompt_regions(30, 8, (20, 25))
    assert sorted(reversed(labels), key=ops.region_sort_key) == labels


def test_probe_regions_follow_the_chat_prompt(smollm2_model, sample_text):
    """On a chat prompt the probe's document regions cover exactly the document's tokens."""
    p = build_prompt(smollm2_model.tokenizer, sample_text, max_tokens=300)
    probe = FlowProbe.for_model(smollm2_model, regions=4, document=p.document)
    with probe.attached(smollm2_model), torch.inference_mode():
        smollm2_model(p.tensor())
    res = probe.result()
    assert res.region_labels == ["sink", "template", "doc 01", "doc 02", "doc 03", "doc 04", "instruction"]
    b = res.region_bounds.tolist()
    assert (b[1], b[2], b[-2], b[-1]) == (1, p.document[0], p.document[1], len(p))
    mass = res.final_token_profile.sum(-1)  # rows of an unedited pattern sum to 1 over all regions
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-5, rtol=0)
    assert res.sink_mass[12:].mean() > 0.2, "SmolLM2 has a real attention sink in its deep layers"
