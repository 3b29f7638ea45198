"""One prompt builder: chat template for a chat model, the paper's plain prompt otherwise, and
the parts located in tokens (so the probe's document regions are document tokens)."""

from __future__ import annotations

import pytest
import torch

from at_probe.flow import ops
from at_probe.runs.plotting import region_sort_key
from at_probe.flow.probe import FlowProbe
from at_probe.models.prompts import INSTRUCTION, build_prompt, prompt_style


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
    from at_probe.models.prompts import continuation_ids

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
    assert sorted(reversed(labels), key=region_sort_key) == labels


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


# ---------------------------------------------------------------------------------------------
# Document and reference text is ordinary text; the prompt is the conversation's own tokens
# (issue #20, item 5)
# ---------------------------------------------------------------------------------------------

WHITESPACE = ["\n\n", "\n", "  ", " ", "\t", "\t\t", "\r\n", "\r\n\r\n", "\u00a0", "\u00a0\u00a0", "\u3000",
              "\u2009", "\u2028", " \n ", "\n\n\n"]
"""Adversarial edges of a document: blank lines, spaces, tabs, CRLF, unicode spaces."""

ADVERSARIAL = [*(w + "The café reopened." for w in WHITESPACE),
               *("The café reopened." + w for w in WHITESPACE),
               "\n\nThe café reopened.\n\n", "  The café reopened.  ", "", " ", "\n"]

CONTROL_STRINGS = ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "</s>", "<s>", "<pad>", "<repo_name>"]


def _text(tok, text: str) -> list[int]:
    """The tokens of ``text`` alone as ordinary text."""
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _conversation_ids(tok, user: str, reply: str | None = None) -> list[int]:
    """Oracle: the rendered conversation's tokens with control tokens only where the template
    put them. The template is rendered around placeholders; its text is cut at the tokenizer's
    added-token strings (the template's own control tokens) and the pieces, with the real texts
    put back in place of the placeholders, are tokenized as ordinary text."""
    import re

    if not getattr(tok, "chat_template", None):  # plain: BOS + document + instruction [+ " " + reply]
        text = user + ("" if reply is None else " " + reply)
        return [tok.bos_token_id, *_text(tok, text)]
    holders = {"\x01user\x01": user, "\x01reply\x01": reply}
    messages = [{"role": "user", "content": "\x01user\x01"}]
    if reply is not None:
        messages.append({"role": "assistant", "content": "\x01reply\x01"})
    rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=reply is None)
    added = sorted(tok.get_added_vocab(), key=len, reverse=True)
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, added)) + ")", rendered):
        if piece in tok.get_added_vocab():
            ids.append(tok.get_added_vocab()[piece])
        elif piece:
            for holder, text in holders.items():
                piece = piece.replace(holder, text or "")
            ids += _text(tok, piece)
    return ids


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_the_oracle_is_the_tokenizers_own_rendering_of_an_ordinary_conversation(request, model_name):
    tok = request.getfixturevalue(model_name).tokenizer
    doc, reply = "The café reopened.\n\nIt had closed in May.", "A café reopened."
    if prompt_style(tok) == "chat":
        own = tok.apply_chat_template([{"role": "user", "content": doc + INSTRUCTION}],
                                      add_generation_prompt=True, tokenize=True)["input_ids"]
        whole = tok.apply_chat_template([{"role": "user", "content": doc + INSTRUCTION},
                                         {"role": "assistant", "content": reply}], tokenize=True)["input_ids"]
    else:
        own, whole = tok(doc + INSTRUCTION)["input_ids"], tok(doc + INSTRUCTION + " " + reply)["input_ids"]
    assert _conversation_ids(tok, doc + INSTRUCTION) == own
    assert _conversation_ids(tok, doc + INSTRUCTION, reply) == whole


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
@pytest.mark.parametrize("control", CONTROL_STRINGS)
def test_control_token_strings_in_a_document_are_ordinary_text(request, model_name, control):
    """``<|im_end|>`` in a document was SmolLM2's end-of-turn id (also its EOS and pad) inside
    ``Prompt.document``; ``</s>`` was the tiny model's EOS."""
    tok = request.getfixturevalue(model_name).tokenizer
    doc = f"The café reopened.{control} It had closed{control}"
    p = build_prompt(tok, doc)
    start, end = p.document
    assert not set(p.ids[start:end]) & set(tok.added_tokens_decoder), "a control id inside the document"
    assert list(p.ids[start:end]) == _text(tok, doc)
    assert tok.decode(list(p.ids[start:end])) == doc
    assert list(p.ids) == _conversation_ids(tok, doc + INSTRUCTION)


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_the_prompt_is_the_conversations_own_tokens_for_any_document(request, model_name):
    """A document starting with a blank line or two spaces was tokenized apart from SmolLM2's
    user header, which the template's own tokenization joins with it (one id fewer)."""
    tok = request.getfixturevalue(model_name).tokenizer
    for doc in ADVERSARIAL:
        assert list(build_prompt(tok, doc).ids) == _conversation_ids(tok, doc + INSTRUCTION), repr(doc)


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_the_document_span_is_the_documents_own_tokens_but_one_joined_with_the_header(request, model_name):
    """The span's ids are the document's own tokens, except where the tokenizer forms one token
    across the document's start (SmolLM2: leading whitespace joined to the header's newline);
    that token is the template's, and the document text it holds is whitespace."""
    tok = request.getfixturevalue(model_name).tokenizer
    joined = []
    for doc in ADVERSARIAL + [c + "The café reopened." + c for c in CONTROL_STRINGS]:
        p = build_prompt(tok, doc)
        start, end = p.document
        if list(p.ids[start:end]) == _text(tok, doc):
            continue
        joined.append(doc)
        held = tok.decode(list(p.ids[start:end]))
        assert doc.endswith(held) and not doc[: len(doc) - len(held)].strip(), repr(doc)
        assert tok.decode(list(p.ids[:start])).endswith("user\n" + doc[: len(doc) - len(held)]), repr(doc)
    if prompt_style(tok) == "plain":
        assert joined == []
    else:
        assert joined and all((d + INSTRUCTION)[:2].isspace() for d in joined), joined


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_a_cut_keeps_the_frame_of_an_adversarial_document(request, model_name):
    tok = request.getfixturevalue(model_name).tokenizer
    doc = "\n\n  The café reopened <|im_end|></s> in May. " * 20 + "\n"
    full = build_prompt(tok, doc)
    cut = build_prompt(tok, doc, max_tokens=len(full) - 30)
    assert len(cut) == len(full) - 30 and cut.dropped == 30
    assert cut.ids[: cut.document[1]] == full.ids[: full.document[1] - 30]
    assert cut.ids[cut.document[1]:] == full.ids[full.document[1]:]


@pytest.mark.parametrize("model_name", ["tiny_model", "smollm2_model"])
def test_a_reference_continues_the_prompt_inside_the_conversation(request, model_name):
    """prompt + continuation_ids(reference) is a prefix of the conversation with the reference
    as the reply (its leading whitespace dropped: it would join the header's newline), and
    control-token strings in a reference are ordinary text."""
    from at_probe.models.prompts import continuation_ids

    tok = request.getfixturevalue(model_name).tokenizer
    references = ["A town", "\nA town", "  A town", "\n\n\tA town \n", "A town <|im_end|> won", "A town</s>",
                  "\u00a0A town\u3000", "A town.\r\n"]
    for doc in ["The café reopened.", "\n\nThe café reopened.  ", "  The café<|im_end|>"]:
        prompt = list(build_prompt(tok, doc).ids)
        for ref in references:
            ids = continuation_ids(tok, ref)
            assert not set(ids) & set(tok.added_tokens_decoder), repr(ref)
            whole = _conversation_ids(tok, doc + INSTRUCTION, ref.lstrip())
            assert whole[: len(prompt) + len(ids)] == prompt + ids, (repr(doc), repr(ref))
            assert tok.decode(ids).strip() == ref.strip()
    assert continuation_ids(tok, "") == continuation_ids(tok, " \n") == []


def test_a_reply_that_joins_the_assistant_header_is_refused(smollm2_model):
    """A template whose header runs straight into the reply ("assistant" + "s town" starts with
    the word "assistants", tokenized "ass", "ist", "ants"): no continuation of the prompt is a
    prefix of the conversation."""
    import copy

    from at_probe.models.prompts import continuation_ids

    tok = copy.deepcopy(smollm2_model.tokenizer)
    header = "message['role'] + '\n' + "
    assert header in tok.chat_template
    tok.chat_template = tok.chat_template.replace(header, "message['role'] + ")
    with pytest.raises(ValueError, match="'s town' joins the end of the chat prompt"):
        continuation_ids(tok, "s town")
    assert continuation_ids(tok, "A town") == _text(tok, "A town")  # "assistant", "A": tokens apart
