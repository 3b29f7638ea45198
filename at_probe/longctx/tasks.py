"""Long-context retrieval prompts: synthetic needles in a haystack of XSum text, RULER-style.

Four tasks (after RULER, Hsieh et al. 2024, and the passkey test of Mohtashami & Jaggi 2023):

* ``passkey``: one sentence states a 5-digit pass key; the question asks for it.
* ``kv``: one sentence gives a named key (two words) a 7-digit value; the question names the key.
* ``kv_distractors``: the same with 3 more sentences of the same form for other keys, placed at
  other sentence ends (seeded); the question names the first key.
* ``vt`` (variable tracking): a chain of 4 assignments (``VAR A = 12345.``, ``VAR B = VAR A.``,
  ...) spread from the depth towards the end; the answer lists the 4 variables in order.

The haystack is the text of XSum release documents of the development split
(``at_probe.xsum.release.is_development``: never the held-out test documents of the XSum
experiment), shuffled per prompt, cut at a sentence end so the whole prompt with its answer
fits ``length`` tokens. The needle goes at the sentence end at or before fraction ``depth`` of
the haystack's characters. Everything is a function of ``(task, length, depth, index)`` and the
documents: the same spec builds the same prompt on any machine.

Example:
    >>> docs = development_documents("../shared/data/xsum-at-release")
    >>> spec = make_spec(tokenizer, docs, "passkey", length=2048, depth=0.5, index=0)
    >>> built = build(tokenizer, spec)
    >>> len(built.prompt) + len(built.answer_ids) <= 2048
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from at_probe.models.prompts import Prompt, Span, build_task_prompt
from at_probe.runs.choices import check_choice

TASKS = ("passkey", "kv", "kv_distractors", "vt")
"""The bench's tasks (module docstring)."""
LENGTHS = (1024, 2048, 4096, 8192)
"""Prompt lengths in tokens (prompt and answer together fit each)."""
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Needle depths: fraction of the haystack's characters before the needle."""

INTRO = ("A piece of important information is hidden in the long text below. Read the text, find "
         "the information and remember it: a question about it follows the text.\n\n")
_WORDS = ("amber", "basalt", "cedar", "delta", "ember", "falcon", "garnet", "harbor", "indigo", "juniper",
          "kestrel", "lantern", "meadow", "nickel", "orchid", "pepper", "quartz", "raven", "saffron",
          "timber", "umber", "velvet", "walnut", "yarrow", "zephyr", "copper", "marble", "thistle")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Built:
    """A spec made into tokens: the prompt, the answer's ids and the target needles' spans."""

    spec: dict[str, Any]
    prompt: Prompt
    answer_ids: list[int]
    needles: list[Span]
    distractors: list[Span]


def development_documents(data_dir: str | Path) -> list[str]:
    """Texts of the release's development documents (every bucket), in release order, repaired
    of mojibake (``at_probe.xsum.release.repair_text``)."""
    from at_probe.xsum.release import is_development, load_all_documents, repair_text

    return [repair_text(d["document"]) for d in load_all_documents(data_dir) if is_development(d["id"])]


def _rng(*parts: Any) -> random.Random:
    """A generator seeded by the parts' text (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _needles(task: str, rng: random.Random) -> tuple[list[str], str, str, str, int]:
    """(needle sentences, question, answer prefix, answer, how many needles are targets)."""
    if task == "passkey":
        key = str(rng.randint(10000, 99999))
        return ([f"The pass key is {key}. Remember it: {key} is the pass key."], "What is the pass key?",
                "The pass key is", f" {key}", 1)
    if task in ("kv", "kv_distractors"):
        names = [f"{a}-{b}" for a, b in (rng.sample(_WORDS, 2) for _ in range(4))]
        while len(set(names)) < 4:  # four different keys
            names = [f"{a}-{b}" for a, b in (rng.sample(_WORDS, 2) for _ in range(4))]
        values = [str(rng.randint(1000000, 9999999)) for _ in names]
        count = 4 if task == "kv_distractors" else 1
        needles = [f"The special code for {n} is {v}." for n, v in zip(names[:count], values)]
        return (needles, f"What is the special code for {names[0]}?", f"The special code for {names[0]} is",
                f" {values[0]}", 1)
    value = str(rng.randint(10000, 99999))
    names = ["".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=5)) for _ in range(4)]
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
    return (chain, f"Which variables hold the value {value}? List them in the order they were assigned.",
            f"The variables that hold the value {value} are", " " + ", ".join(names), 4)


def _sentences(documents: Sequence[str], rng: random.Random) -> list[str]:
    """Sentences of the shuffled documents; a document's last sentence ends with a blank line."""
    order = list(range(len(documents)))
    rng.shuffle(order)
    out: list[str] = []
    for i in order:
        parts = [s for s in _SENTENCE_END.split(documents[i].strip()) if s]
        if parts:
            parts[-1] += "\n\n"
            out += parts
    return out


def _join(sentences: Sequence[str]) -> str:
    return "".join(s if s.endswith("\n") else s + " " for s in sentences).rstrip()


def make_spec(tokenizer: Any, documents: Sequence[str], task: str, *, length: int, depth: float,
              index: int) -> dict[str, Any]:
    """A prompt of ``task`` (``TASKS``) as plain data: the context text with its needles,
    their character ranges, the question, answer prefix and answer.

    The haystack takes as many sentences as fit ``length`` tokens with the needles, the
    template, the question and the answer. Needle ``0`` (and for ``vt`` the chain after it)
    goes at the sentence end at or before ``depth`` of the haystack; distractors at other
    sentence ends drawn from the same seed.

    Raises:
        ValueError: an unknown task, a depth outside ``[0, 1]``, or a length too short for the
            question alone.
    """
    check_choice("task", task, TASKS)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    rng = _rng(task, length, depth, index)
    needles, question, prefix, answer, targets = _needles(task, rng)
    sentences = _sentences(documents, rng)

    def size(n: int) -> int:
        context = _join([*sentences[:n], *needles])
        built, answer_ids, _ = build_task_prompt(tokenizer, context, intro=INTRO, question="\n\n" + question,
                                                 answer_prefix=prefix, answer=answer)
        return len(built) + len(answer_ids)

    total, hi = 0, 0
    while hi < len(sentences) and total < 10 * length:  # far more characters than tokens fit
        total, hi = total + len(sentences[hi]) + 1, hi + 1
    lo = 0  # the most sentences that fit: size is increasing in n
    if size(0) > length:
        raise ValueError(f"a {task} prompt needs {size(0)} tokens without any haystack; length {length} is too short")
    if size(hi) <= length:
        raise ValueError(f"the documents hold fewer than {length} tokens of text")
    while lo < hi - 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= length else (lo, mid)
    hay = sentences[:lo]
    chars = [0]
    for s in hay:
        chars.append(chars[-1] + len(s) + 1)
    at = max(i for i, c in enumerate(chars) if c <= depth * chars[-1])  # the sentence end at or before
    if task == "vt":
        slots = [at + round(i * (len(hay) - at) / len(needles)) for i in range(len(needles))]
    else:
        others = [i for i in range(len(hay) + 1) if i != at]
        slots = [at, *rng.sample(others, len(needles) - 1)]
    pieces: list[str] = []
    marks: list[tuple[int, int]] = []
    placed = sorted(range(len(needles)), key=lambda j: (slots[j], j))
    cursor = 0
    for j in placed:
        pieces += hay[cursor : slots[j]]
        cursor = slots[j]
        pieces.append(needles[j])
        start = len(_join(pieces)) - len(needles[j])
        marks.append((j, start))
    pieces += hay[cursor:]
    context = _join(pieces)
    ranges = [(0, 0)] * len(needles)
    for j, start in marks:
        # a space before the needle is part of its first token; a newline is a token of its own
        lead = 1 if start and context[start - 1] == " " else 0
        ranges[j] = (start - lead, start + len(needles[j]))
        assert context[start : start + len(needles[j])] == needles[j]
    return {"id": f"{task}-{length}-{depth}-{index:03d}", "task": task, "length": length, "depth": depth,
            "index": index, "context": context, "needles": ranges, "targets": targets,
            "question": question, "answer_prefix": prefix, "answer": answer}


def answer_items(spec: dict[str, Any]) -> list[str]:
    """What a generated reply must hold to count as right (``at_probe.longctx.scoring.reply``):
    the 4 variables of a ``vt`` chain, else the answer's value (its digits)."""
    return [item.strip() for item in spec["answer"].split(",")]


def build(tokenizer: Any, spec: dict[str, Any]) -> Built:
    """Tokens of a spec (``make_spec``): prompt, answer ids, target and distractor needle spans."""
    prompt, answer_ids, spans = build_task_prompt(
        tokenizer, spec["context"], intro=INTRO, question="\n\n" + spec["question"],
        answer_prefix=spec["answer_prefix"], answer=spec["answer"], marks=[tuple(r) for r in spec["needles"]])
    n = spec["targets"]
    return Built(spec, prompt, answer_ids, spans[:n], spans[n:])
