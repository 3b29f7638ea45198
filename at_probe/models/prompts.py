"""The summarisation prompt, built once for every caller, with its parts located in tokens.

Two styles, chosen from the tokenizer:

* ``"chat"`` (the tokenizer has a chat template, e.g. SmolLM2-135M-Instruct): the document
  followed by the paper's instruction is one user turn, rendered by the template with the
  generation prompt (the assistant header) at the end.
* ``"plain"`` (a base model such as llama-7b or the embedded tiny model): the paper's own
  prompt, ``BOS + document + " Please summarize context above:"`` (arXiv 2307.13365).

A prompt is the tokenizer's own tokenization of the whole rendered conversation, with control
(special) tokens only where the template put them: document and reference text is always
ordinary text, so a document containing ``<|im_end|>`` or ``</s>`` gets the tokens of those
characters, never the end-of-turn or EOS id. The document's token span is read from the
tokenizer's character offsets, so a long document can be cut at its end without touching the
instruction or the template. The flow probe uses that span to label its regions
(``at_probe.flow.ops.prompt_regions``).

Where the span can be inexact: a token the tokenizer forms across the document's edge belongs
to the template, not the document. Of the tokenizers tested, only SmolLM2's chat template does
this, when a document starts with whitespace that joins the user header's newline (a blank
line makes one newline-newline token, two spaces a newline-space token; likewise two tabs or a
whitespace-only document); the span then starts after that token. Elsewhere the span's ids are exactly the document's own tokens
(``text_ids(tokenizer, document)``).

Example:
    >>> from at_probe.models.prompts import build_prompt
    >>> p = build_prompt(model.tokenizer, document, max_tokens=2048)
    >>> p.style, p.document, len(p.ids)          # ('chat', (31, 1650), 1662)
    >>> tokens = p.tensor(model.cfg.device)      # [1, T]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from at_probe.runs.choices import check_choice

INSTRUCTION = " Please summarize context above:"
"""The paper's instruction, appended to the document in both styles."""

PromptStyle = Literal["chat", "plain"]
Span = tuple[int, int]

_SENTINEL = "\x00at_probe-document\x00"  # stands in for the user turn while splitting the template


@dataclass(frozen=True)
class Prompt:
    """Token ids of one prompt and where its parts are.

    Attributes:
        ids: the prompt's token ids (no padding).
        style: ``"chat"`` or ``"plain"``.
        document: ``[start, end)`` token positions of the document (after any cut): the tokens
            that lie wholly inside the document's text (see the module's notes).
        dropped: document tokens cut from its end so the prompt fits (0 when it fits).
    """

    ids: tuple[int, ...]
    style: PromptStyle
    document: Span
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def parts(self) -> dict[str, Span]:
        """``[start, end)`` of each part: ``sink`` (token 0), ``template`` (the rest of the
        template head), ``document`` and ``instruction`` (instruction and template tail).
        Empty parts (e.g. no template in the plain style) have ``start == end``."""
        start, end = self.document
        first = max(start, 1)  # token 0 is the sink even when the document starts there
        return {"sink": (0, 1), "template": (1, first), "document": (first, end),
                "instruction": (end, len(self.ids))}

    def tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        """The ids as a ``[1, T]`` long tensor."""
        return torch.tensor([self.ids], device=device)


def prompt_style(tokenizer: Any) -> PromptStyle:
    """``"chat"`` when the tokenizer carries a chat template, else ``"plain"``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "plain"


def build_prompt(tokenizer: Any, document: str, *, max_tokens: int | None = None,
                 style: PromptStyle | None = None) -> Prompt:
    """The summarisation prompt for ``document``, cut at the document's end to ``max_tokens``.

    Uncut, ``ids`` is the tokenization of the rendered conversation (the chat template's user
    turn ``document + INSTRUCTION`` with its generation prompt, or the plain prompt) with special
    tokens only where the template put them: what ``apply_chat_template(..., tokenize=True)``
    gives for any document free of special-token strings. A cut drops the document's last
    tokens and keeps every other token as it was.

    Args:
        tokenizer: a Hugging Face fast tokenizer (``model.tokenizer``; offsets are needed).
        document: the text to summarise (ordinary text, whatever it contains).
        max_tokens: most prompt tokens allowed; ``None`` for no limit.
        style: force ``"chat"`` or ``"plain"``; default ``prompt_style(tokenizer)``.

    Raises:
        ValueError: ``max_tokens`` leaves no token for the document, ``"chat"`` is asked of
            a tokenizer without a chat template, or an unknown ``style``.
    """
    style = check_choice("prompt style", style or prompt_style(tokenizer), get_args(PromptStyle))
    if style == "plain":
        ids, (start, end) = _tokenize_around(tokenizer, "", document, INSTRUCTION)
        specials = _leading_specials(tokenizer)
        ids, start, end = specials + ids, start + len(specials), end + len(specials)
    else:
        before, after = _frame(tokenizer, style, [{"role": "user", "content": _SENTINEL + INSTRUCTION}],
                               generation_prompt=True)
        ids, (start, end) = _tokenize_around(tokenizer, before, document, after)
    frame = len(ids) - (end - start)  # template and instruction tokens
    room = end - start if max_tokens is None else max_tokens - frame
    if max_tokens is not None and room < 1:
        raise ValueError(f"no room for a document in {max_tokens} tokens ({frame} are "
                         f"taken by the {style} prompt's template and instruction)")
    kept = min(room, end - start)
    return Prompt(ids=(*ids[: start + kept], *ids[end:]), style=style, document=(start, start + kept),
                  dropped=end - start - kept)


def build_prompts(tokenizer: Any, documents: list[str], *, max_tokens: int | None = None,
                  style: PromptStyle | None = None) -> list[Prompt]:
    """``build_prompt`` for each document (one style for all)."""
    return [build_prompt(tokenizer, d, max_tokens=max_tokens, style=style) for d in documents]


def continuation_ids(tokenizer: Any, text: str, style: PromptStyle | None = None) -> list[int]:
    """Token ids of ``text`` as the reply that follows the prompt (e.g. a reference summary
    scored by teacher forcing), tokenized in place in the conversation as ordinary text.

    After the plain prompt's "above:" a space separates the reply; the chat template's
    assistant header ends in a newline, so there none does. The reply starts at its first
    non-whitespace character: leading whitespace would join the header's newline into one
    token (SmolLM2), and no prompt could then be a prefix of the conversation. So
    ``prompt.ids + continuation_ids(text)`` is a prefix of the tokenized conversation whose
    reply is ``text.lstrip()`` (the reply's own end, e.g. ``<|im_end|>``, follows). An empty
    (or all-whitespace) ``text`` gives ``[]``.

    Raises:
        ValueError: the tokenizer joins the reply with the end of the prompt even so (then no
            continuation of the prompt can match the conversation).
    """
    style = check_choice("prompt style", style or prompt_style(tokenizer), get_args(PromptStyle))
    text = text.lstrip()
    if not text:
        return []
    if style == "plain":
        before, reply, after = INSTRUCTION, " " + text, ""
    else:
        before, after = _frame(tokenizer, style, [{"role": "user", "content": "x"},
                                                  {"role": "assistant", "content": _SENTINEL}])
        reply = text
    ids, (start, end) = _tokenize_around(tokenizer, before, reply, after)
    if ids[:start] != _template_ids(tokenizer, before)[0]:
        raise ValueError(f"{text[:40]!r} joins the end of the {style} prompt in this tokenizer: "
                         "it cannot be scored as a continuation")
    return ids[start:end]


def build_task_prompt(tokenizer: Any, context: str, *, question: str, intro: str = "",
                      answer_prefix: str = "", answer: str = "", marks: Sequence[Span] = (),
                      style: PromptStyle | None = None) -> tuple[Prompt, list[int], list[Span]]:
    """A question about ``context``: the prompt, the answer's token ids and the token span of
    each marked character range of ``context`` (a needle).

    Chat style: one user turn ``intro + context + question``, the generation prompt, then
    ``answer_prefix`` as the start of the reply; plain style: the tokenizer's leading special
    tokens, then the same text. ``context`` is the prompt's document part (``Prompt.document``),
    ordinary text whatever it contains. ``answer`` is tokenized in place after the prefix (it
    should start with the space that follows the prefix).

    Returns:
        ``(prompt, answer_ids, mark_spans)``: ``prompt.ids + answer_ids`` is the tokenization of
        the conversation with the answer; each span is ``[start, end)`` in prompt positions.

    Raises:
        ValueError: the answer's first token would join the end of the prefix (then no
            prompt is a prefix of the answered conversation), or a mark outside ``context``.
    """
    style = check_choice("prompt style", style or prompt_style(tokenizer), get_args(PromptStyle))
    if any(not 0 <= a <= b <= len(context) for a, b in marks):
        raise ValueError(f"marks {list(marks)} fall outside the context ({len(context)} characters)")
    if style == "plain":
        before, after = intro, question + answer_prefix
        specials = _leading_specials(tokenizer)
    else:
        before, after = _frame(tokenizer, style, [{"role": "user", "content": intro + _SENTINEL + question}],
                               generation_prompt=True)
        after += answer_prefix
        specials = []
    ranges = [(0, len(context)), *marks]
    ids, spans = _tokenize_marked(tokenizer, before, context, after, ranges)
    answered, _ = _tokenize_marked(tokenizer, before, context, after + answer, ranges)
    if answered[: len(ids)] != ids:
        raise ValueError(f"the answer {answer[:20]!r} joins the end of the prefix {answer_prefix[-20:]!r} "
                         "in this tokenizer: it cannot be scored as a continuation")
    shift = len(specials)
    spans = [(a + shift, b + shift) for a, b in spans]
    return Prompt(ids=(*specials, *ids), style=style, document=spans[0]), answered[len(ids):], spans[1:]


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` alone as ordinary text: special-token strings inside it (``</s>``,
    ``<|im_end|>``) are tokenized as the characters they are, never as control tokens."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _template_ids(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Ids and character offsets of template text, whose special-token strings are the
    template's control tokens."""
    if not text:
        return [], []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _tokenize_around(tokenizer: Any, before: str, text: str, after: str) -> tuple[list[int], Span]:
    """Ids of ``before + text + after`` with control tokens only in the template parts
    ``before`` and ``after``, and the ``[start, end)`` span of the tokens wholly inside ``text``.

    The tokenizer cuts its input at its added tokens and tokenizes the pieces between them
    apart. So ``before`` keeps its ids up to and with its last added token, ``after`` from its
    first, and the piece between them (``text`` with the template text around it) is tokenized
    as ordinary text. A token that straddles an edge of ``text`` is left out of the span.
    """
    ids, spans = _tokenize_marked(tokenizer, before, text, after, [(0, len(text))])
    return ids, spans[0]


def _tokenize_marked(tokenizer: Any, before: str, text: str, after: str,
                     marks: list[Span]) -> tuple[list[int], list[Span]]:
    """``_tokenize_around`` with the token span of each ``[start, end)`` character range of
    ``text`` in ``marks`` (the tokens wholly inside it)."""
    added = tokenizer.added_tokens_decoder
    head, head_offsets = _template_ids(tokenizer, before)
    tail, tail_offsets = _template_ids(tokenizer, after)
    cut = max((i + 1 for i, t in enumerate(head) if t in added), default=0)
    head_text = before[head_offsets[cut - 1][1]:] if cut else before
    tail_cut = min((i for i, t in enumerate(tail) if t in added), default=len(tail))
    tail_text = after[: tail_offsets[tail_cut][0]] if tail_cut < len(tail) else after
    enc = tokenizer(head_text + text + tail_text, add_special_tokens=False, split_special_tokens=True,
                    return_offsets_mapping=True)
    spans = []
    for a, b in marks:
        lo, hi = len(head_text) + a, len(head_text) + b
        start = cut + sum(s < lo for s, _ in enc["offset_mapping"])  # tokens that begin before the mark
        end = max(start, cut + sum(e <= hi for _, e in enc["offset_mapping"]))  # tokens that end by its end
        spans.append((start, end))
    return [*head[:cut], *enc["input_ids"], *tail[tail_cut:]], spans


def _frame(tokenizer: Any, style: PromptStyle, messages: list[dict[str, str]], *,
           generation_prompt: bool = False) -> tuple[str, str]:
    """The chat template's rendering of ``messages`` around ``_SENTINEL``: (text before, text after)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the 'chat' prompt style needs a tokenizer with a chat template")
    rendered = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    before, _, after = rendered.partition(_SENTINEL)
    return before, after


def _leading_specials(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama; none for some)."""
    with_specials = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_specials[: len(with_specials) - len(without)] if with_specials[-len(without):] == without else []
