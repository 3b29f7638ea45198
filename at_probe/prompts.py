"""The summarisation prompt, built once for every caller, with its parts located in tokens.

Two styles, chosen from the tokenizer:

* ``"chat"`` (the tokenizer has a chat template, e.g. SmolLM2-135M-Instruct): the document
  followed by the paper's instruction is one user turn, rendered by the template with the
  generation prompt (the assistant header) at the end.
* ``"plain"`` (a base model such as llama-7b or the embedded tiny model): the paper's own
  prompt, ``BOS + document + " Please summarize context above:"`` (arXiv 2307.13365).

Each prompt is the concatenation of three separately tokenized pieces (template head,
document, instruction + template tail), so the document's token span is known exactly and a
long document can be cut at its end without touching the instruction or the template. The
flow probe uses that span to label its regions (``at_probe.ops.prompt_regions``).

Example:
    >>> from at_probe.prompts import build_prompt
    >>> p = build_prompt(model.tokenizer, document, max_tokens=2048)
    >>> p.style, p.document, len(p.ids)          # ('chat', (31, 1650), 1662)
    >>> tokens = p.tensor(model.cfg.device)      # [1, T]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

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
        document: ``[start, end)`` token positions of the document (after any cut).
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

    Args:
        tokenizer: a Hugging Face tokenizer (``model.tokenizer``).
        document: the text to summarise.
        max_tokens: most prompt tokens allowed; ``None`` for no limit.
        style: force ``"chat"`` or ``"plain"``; default ``prompt_style(tokenizer)``.

    Raises:
        ValueError: ``max_tokens`` leaves no token for the document, or ``"chat"``
            is asked of a tokenizer without a chat template.
    """
    style = style or prompt_style(tokenizer)
    head, tail = _frame(tokenizer, style)
    body = tokenizer(document, add_special_tokens=False)["input_ids"]
    room = len(body) if max_tokens is None else max_tokens - len(head) - len(tail)
    if max_tokens is not None and room < 1:
        raise ValueError(f"no room for a document in {max_tokens} tokens ({len(head) + len(tail)} are "
                         f"taken by the {style} prompt's template and instruction)")
    kept = body[:room]
    ids = (*head, *kept, *tail)
    return Prompt(ids=ids, style=style, document=(len(head), len(head) + len(kept)),
                  dropped=len(body) - len(kept))


def build_prompts(tokenizer: Any, documents: list[str], *, max_tokens: int | None = None,
                  style: PromptStyle | None = None) -> list[Prompt]:
    """``build_prompt`` for each document (one style for all)."""
    return [build_prompt(tokenizer, d, max_tokens=max_tokens, style=style) for d in documents]


def continuation_ids(tokenizer: Any, text: str, style: PromptStyle | None = None) -> list[int]:
    """Token ids of ``text`` as it would follow the prompt (e.g. a reference summary scored by
    teacher forcing): after the plain prompt's "above:" a space separates it; the chat
    template's assistant header ends in a newline, so there none does."""
    style = style or prompt_style(tokenizer)
    return tokenizer((" " if style == "plain" else "") + text, add_special_tokens=False)["input_ids"]


def _frame(tokenizer: Any, style: PromptStyle) -> tuple[list[int], list[int]]:
    """Token ids before and after the document: (template head, instruction + template tail)."""
    if style == "plain":
        specials = _leading_specials(tokenizer)
        return specials, tokenizer(INSTRUCTION, add_special_tokens=False)["input_ids"]
    if style != "chat":
        raise ValueError(f"unknown prompt style {style!r}: expected 'chat' or 'plain'")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the 'chat' prompt style needs a tokenizer with a chat template")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL + INSTRUCTION}],
                                             tokenize=False, add_generation_prompt=True)
    before, _, after = rendered.partition(_SENTINEL)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(before), encode(after)


def _leading_specials(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama; none for some)."""
    with_specials = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return with_specials[: len(with_specials) - len(without)] if with_specials[-len(without):] == without else []
