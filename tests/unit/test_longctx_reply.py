"""A generated reply's cut and match (``at_probe.longctx.scoring.reply``) on a stand-in model
whose greedy tokens are fixed: where the reply ends, and what counts as holding the answer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from at_probe.longctx.scoring import reply
from at_probe.longctx.tasks import Built
from at_probe.models.prompts import Prompt

END_OF_TURN, END_OF_TEXT = 2, 0
WORDS = {5: " The", 6: " key", 7: " is", 8: " 12345", 9: ".", 10: " later"}


class _Model:
    """Generates ``prompt + continuation`` (the continuation fixed), like ``generate`` would."""

    def __init__(self, continuation: list[int]):
        self.continuation = continuation
        self.cfg = SimpleNamespace(device="cpu")
        self.tokenizer = SimpleNamespace(all_special_ids=[END_OF_TEXT, 1, END_OF_TURN],
                                         decode=lambda ids: "".join(WORDS[i] for i in ids))

    def generate(self, ids, *, max_new_tokens, **kwargs):
        return torch.cat([ids, torch.tensor([self.continuation[:max_new_tokens]])], dim=1)


def _built(answer: str) -> Built:
    prompt = Prompt(ids=(3, 4), style="chat", document=(0, 1))
    return Built({"answer": answer}, prompt, [], [], [])


@pytest.mark.parametrize("continuation,limit,expected", [
    ([5, 6, 7, 8, 9, END_OF_TURN, 10], 10, (" The key is 12345.", 5, True)),
    ([5, 6, END_OF_TEXT, 8, END_OF_TURN], 10, (" The key", 2, True)),  # any special token ends the turn
    ([5, 6, 7, 8, 9, END_OF_TURN], 4, (" The key is 12345", 4, False)),  # cut by the limit
])
def test_a_reply_ends_at_the_first_special_token_or_the_limit(continuation, limit, expected):
    out = reply(_Model(continuation), _built(" 12345"), None, limit)
    assert (out["reply"], out["reply_length"], out["reply_ended"]) == expected
    assert out["reply_match"] == (1.0 if "12345" in expected[0] else 0.0)


def test_the_match_is_the_share_of_the_answers_items_held_ignoring_case():
    model = _Model([5, 6, 7, 8, 9, END_OF_TURN])
    assert reply(model, _built(" KEY, 12345, absent, THE"), None, 10)["reply_match"] == 0.75
    assert reply(model, _built(" 1234"), None, 10)["reply_match"] == 1.0  # inside a longer number, as RULER
