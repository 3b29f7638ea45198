"""One error for a value outside a fixed set: the valid choices and the nearest of them.

Every option of the public API that takes one of a fixed set of names (``rouge(tokenizer=)``,
``bootstrap_mean(missing=)``, ``EmphasisSteering(target=)``, setting kinds and keys, XSum
buckets, ...) refuses an unknown value at once with one line that lists the choices and, when
one is close (``difflib``), suggests it:

    >>> check_choice("ROUGE tokenizer", "unicod", ("default", "unicode"))
    UnknownChoiceError: unknown ROUGE tokenizer 'unicod': expected one of 'default', 'unicode'; did you mean 'unicode'?
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


class UnknownChoiceError(ValueError):
    """A value outside a fixed set of choices; the message lists them (``choice_message``)."""


def suggestion(value: object, candidates: Iterable[object]) -> str:
    """``"; did you mean 'x'?"`` for the candidate closest to ``value`` (``difflib``'s ratio of at
    least 0.6, its default), else ``""``."""
    close = difflib.get_close_matches(str(value), [str(c) for c in candidates], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def choice_message(what: str, value: object, choices: Iterable[object]) -> str:
    """``"unknown {what} {value!r}: expected one of 'a', 'b'"``, with ``suggestion``'s hint."""
    choices = list(choices)
    return (f"unknown {what} {value!r}: expected one of {', '.join(map(repr, choices))}"
            f"{suggestion(value, choices)}")


def check_choice(what: str, value: T, choices: Iterable[T]) -> T:
    """``value`` when it is one of ``choices``.

    Raises:
        UnknownChoiceError: any other value (``choice_message``), unhashable ones included.
    """
    choices = list(choices)  # a list: an unhashable value is compared, not hashed
    if value in choices:
        return value
    raise UnknownChoiceError(choice_message(what, value, choices))
