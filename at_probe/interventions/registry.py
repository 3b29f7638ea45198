"""One registry of intervention methods: what a setting kind is and how its setting string builds it.

A *setting* names one intervention with its parameters as text, ``KIND:key=value,...``
(``at_probe.xsum.parse_setting`` reads the grammar). Each method declares itself once, at the
bottom of its own module, as a ``Method``: its kind, its keys (parse type, constructor field,
default, required), the development profile it needs and how that profile becomes constructor
arguments, and its placebo twin (another registered kind) with the twin's roles in a test run.
Everything that handles settings (the grammar, ``placebo_of``, the development selection, the
roles of a test run, ``flow.py --selection`` and ``--settings``) reads this registry.

The canonical name of a setting is ``KIND:`` then every key whose value is not None as
``key=value``, sorted by key, each value read back from the built object (so the class's own
defaults fill in what the string omits) and written with ``Key.show``. Committed runs and
selection files store these names: a change to a key's field, default or ``show`` renames them.

Adding a method: write its module (the class, then ``register(Method(...))`` at the bottom) and
import that module in ``at_probe/interventions/__init__.py``; ``docs/design.md`` shows how.

Example:
    >>> from at_probe.interventions.registry import method
    >>> method("paper").build({"alpha": 1.0})[1]
    'paper:alpha=1.0,beta=0.5,k=2'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from at_probe.runs.choices import UnknownChoiceError, check_choice, choice_message

PLACEBO_SEED = 0
"""The seed a placebo twin takes when none is given (every twin has a ``seed`` key)."""

_RESERVED = "baseline"  # the setting without an intervention (the grammar's own word)


@dataclass(frozen=True)
class Key:
    """One ``key=value`` of a setting string.

    Attributes:
        parse: the value's text -> the value (``int``, ``float``, ``layer_range``, ``choice(...)``);
            raises ValueError for a bad value (an ``UnknownChoiceError``'s message is shown).
        field: the constructor argument the key sets; ``""`` (default): the key's own name;
            None: no argument (``Method.profile_args`` reads it, e.g. emphasis's ``top``).
        default: the value when the key is omitted, or a function of the other keys' values
            (``{key: value}``) that returns it; None: the constructor's own default.
        required: the setting must give the key.
        show: value -> its text in the canonical name (default ``str``).
    """

    parse: Callable[[str], Any]
    field: str | None = ""
    default: Any = None
    required: bool = False
    show: Callable[[Any], str] = str


@dataclass(frozen=True)
class Placebo:
    """A method's placebo twin: a registered kind taking the method's keys plus ``seed``.

    Attributes:
        kind: the twin's setting kind.
        roles: test-run role suffix -> extra ``key=value`` text of the twin in that role
            (``<method>_<suffix>``, e.g. emphasis's ``{"placebo": {}, "span_placebo":
            {"placebo": "span"}}``); default one role, ``<method>_placebo``.
        applies: which of the method's settings have the twin, from the key texts of their
            canonical name (``setting_parts``); None (default): all of them. The paper
            transition's parts without ``move`` have none (their twin would be the edit itself).
    """

    kind: str
    roles: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=lambda: {"placebo": {}})
    applies: Callable[[Mapping[str, str]], bool] | None = None

    def applies_to(self, name: str) -> bool:
        """Whether the canonical setting ``name`` (of the twin's method) has this placebo."""
        return self.applies is None or self.applies(setting_parts(name)[1])


@dataclass(frozen=True)
class Method:
    """An intervention method as the settings grammar sees it.

    Attributes:
        kind: the setting kind (``paper``, ``emphasis_placebo``, ...).
        cls: the intervention class (any callable taking the constructor arguments).
        keys: the setting's keys, in the order error messages list them.
        summary: one line for ``--help`` and the docs.
        placebo: its placebo twin, or None.
        profile: the development profile it needs (a key of a selection's ``profiles``), or None.
        profile_args: ``(profile, {key: value}) -> constructor arguments`` (with ``profile``).
        profile_when: ``{key: value} -> whether this setting needs the profile``; None
            (default): every setting does. (The sink edits need a head ranking only with ``top``.)

    Raises:
        ValueError: a kind that is not a plain word, ``profile`` without ``profile_args`` (or
            the reverse), or a key with no constructor field that nothing reads.
    """

    kind: str
    cls: Callable[..., Any]
    keys: Mapping[str, Key]
    summary: str = ""
    placebo: Placebo | None = None
    profile: str | None = None
    profile_args: Callable[[Any, Mapping[str, Any]], Mapping[str, Any]] | None = None
    profile_when: Callable[[Mapping[str, Any]], bool] | None = None

    def needs_profile(self, values: Mapping[str, Any]) -> bool:
        """Whether a setting of these parsed key values needs ``self.profile``."""
        return self.profile is not None and (self.profile_when is None or self.profile_when(values))

    def __post_init__(self) -> None:
        if not self.kind.replace("_", "").isalnum() or self.kind == _RESERVED:
            raise ValueError(f"a setting kind must be a word of letters, digits and _ other than "
                             f"{_RESERVED!r}, got {self.kind!r}")
        if (self.profile is None) != (self.profile_args is None):
            raise ValueError(f"{self.kind}: profile and profile_args go together")
        if self.profile_when is not None and self.profile is None:
            raise ValueError(f"{self.kind}: profile_when without a profile")
        unread = [k for k, key in self.keys.items() if key.field is None and self.profile_args is None]
        if unread:
            raise ValueError(f"{self.kind}: keys {unread} set no constructor field and no "
                             "profile_args reads them")

    def build(self, values: Mapping[str, Any], profile: Any = None) -> tuple[Any, str]:
        """The intervention of parsed key values and its canonical name.

        Args:
            values: ``{key: parsed value}`` as given (omitted keys take ``Key.default``, then the
                constructor's default).
            profile: the development profile ``self.profile`` names (ignored without one).

        Raises:
            ValueError: invalid parameters (the class's message), or what ``profile_args`` refuses.
        """
        values = dict(values)
        for name, key in self.keys.items():
            if name not in values and key.default is not None:
                values[name] = key.default(values) if callable(key.default) else key.default
        args = {key.field or name: values[name] for name, key in self.keys.items()
                if key.field is not None and name in values}
        if self.profile_args is not None:
            args.update(self.profile_args(profile, values))
        edit = self.cls(**args)
        shown = {}
        for name, key in self.keys.items():
            value = values.get(name) if key.field is None else getattr(edit, key.field or name)
            if value is not None:
                shown[name] = key.show(value)
        return edit, self.kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(shown.items()))


_METHODS: dict[str, Method] = {}


def register(entry: Method) -> Method:
    """Add a method (returns it); its module calls this once, at its bottom.

    Raises:
        ValueError: a kind already registered.
    """
    if entry.kind in _METHODS:
        raise ValueError(f"setting kind {entry.kind!r} is already registered "
                         f"(by {getattr(_METHODS[entry.kind].cls, '__module__', '?')})")
    _METHODS[entry.kind] = entry
    return entry


def unregister(kind: str) -> Method:
    """Remove a method (a test's own, at teardown) and return it.

    Raises:
        UnknownChoiceError: an unknown kind (``method``'s message).
    """
    entry = method(kind)
    del _METHODS[kind]
    return entry


def kinds() -> tuple[str, ...]:
    """The registered setting kinds, in registration order."""
    return tuple(_METHODS)


def method(kind: str) -> Method:
    """The method of a setting kind.

    Raises:
        UnknownChoiceError: an unknown kind; the message lists the registered ones and the nearest.
    """
    if kind not in _METHODS:
        raise UnknownChoiceError(choice_message("setting kind", kind, kinds()))
    return _METHODS[kind]


def is_placebo(kind: str) -> bool:
    """Whether ``kind`` is some registered method's placebo twin."""
    return any(m.placebo is not None and m.placebo.kind == kind for m in _METHODS.values())


def setting_parts(name: str) -> tuple[str, dict[str, str]]:
    """A canonical setting name -> its kind and its ``key=value`` texts
    (``"paper:alpha=1.0,k=2"`` -> ``("paper", {"alpha": "1.0", "k": "2"})``; ``"baseline"`` ->
    ``("baseline", {})``)."""
    kind, _, body = name.partition(":")
    return kind, dict(item.split("=", 1) for item in body.split(",") if item)


def placebo_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(setting, its placebo)`` pairs among canonical setting names, any seed: the placebo is
    of the setting's twin kind and has the setting's keys and values plus the twin's own
    (``seed``, and e.g. emphasis's ``placebo``). Names of unknown kinds pair with nothing."""
    parts = {n: setting_parts(n) for n in names}
    pairs = []
    for a, (kind, keys) in parts.items():
        twin = _METHODS[kind].placebo if kind in _METHODS else None
        if twin is None:
            continue
        for b, (twin_kind, twin_keys) in parts.items():
            if (twin_kind == twin.kind and set(twin_keys) - set(keys) <= {"seed", "placebo"}
                    and all(twin_keys.get(k) == v for k, v in keys.items())):
                pairs.append((a, b))
    return pairs


# ---------------------------------------------------------------------------------------------
# Parsers and printers the methods' keys share
# ---------------------------------------------------------------------------------------------

def layer_range(text: str) -> tuple[int, ...]:
    """``"15-29"`` -> layers 15..29 (inclusive); ``"7"`` -> (7,).

    Raises:
        ValueError: not ``a`` or ``a-b`` with ``0 <= a <= b``.
    """
    first, dash, last = text.partition("-")
    lo, hi = int(first), int(last) if dash else int(first)
    if not 0 <= lo <= hi:
        raise ValueError(text)
    return tuple(range(lo, hi + 1))


def show_layer_range(layers: tuple[int, ...]) -> str:
    """Layers as their canonical text ``first-last`` (``(7,)`` -> ``"7-7"``)."""
    return f"{layers[0]}-{layers[-1]}"


def choice(what: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A ``Key.parse`` for one of ``choices`` (``check_choice``'s message names ``what``)."""
    return lambda text: check_choice(what, text, choices)
