"""Settings strings: one intervention setting per string (``kind:key=value,...``), their
canonical names, placebo twins and the development grids."""

from __future__ import annotations

from typing import Any, Literal

from at_probe.runs.choices import UnknownChoiceError, check_choice, choice_message, suggestion


class SettingError(ValueError):
    """A setting string that cannot be parsed (the message names the bad part)."""


_PAPER_KEYS = {"alpha": float, "beta": float, "k": int}
_FIELD = {"k": "intervals_per_layer"}  # setting-string key -> transition field
_SETTING_KEYS: dict[str, dict[str, type]] = {
    "paper": _PAPER_KEYS,
    "placebo": {**_PAPER_KEYS, "seed": int},
    "sra": {"begin_length": int, "threshold_len": int, "elimi_factor_inter": float,
            "elimi_factor_outer": float, "strengthen_factor_inter": float,
            "strengthen_factor_outer": float, "dyna_div": int},
}


def _layer_range(text: str) -> tuple[int, ...]:
    """``"15-29"`` -> layers 15..29 (inclusive); ``"7"`` -> (7,)."""
    first, dash, last = text.partition("-")
    lo, hi = int(first), int(last) if dash else int(first)
    if not 0 <= lo <= hi:
        raise ValueError(text)
    return tuple(range(lo, hi + 1))


def _target(text: str) -> str:
    from at_probe.interventions.emphasis import TARGETS

    return check_choice("emphasis target", text, TARGETS)


def _placebo_kind(text: str) -> str:
    from at_probe.interventions.emphasis import PLACEBOS

    return check_choice("emphasis placebo", text, PLACEBOS)


_TEMPERATURE_KEYS = {"tau": float, "layers": _layer_range}
_CALIBRATION_KEYS = {"strength": float, "layers": _layer_range}
_EMPHASIS_KEYS = {"alpha": float, "target": _target, "top": int}
_SETTING_KEYS.update({
    "temperature": _TEMPERATURE_KEYS,
    "calibration": _CALIBRATION_KEYS,
    "calibration_placebo": {**_CALIBRATION_KEYS, "seed": int},
    "emphasis": _EMPHASIS_KEYS,
    "emphasis_placebo": {**_EMPHASIS_KEYS, "seed": int, "placebo": _placebo_kind},
})
_REQUIRED = {"temperature": ("tau",), "emphasis": ("top",), "emphasis_placebo": ("top",)}
ALTERNATIVES: tuple[str, ...] = ("emphasis", "calibration", "temperature")
"""The alternative interventions (``at_probe.interventions.emphasis``, ``.calibration``, ``.temperature``)."""


def parse_setting(text: str, profiles: dict[str, Any] | None = None) -> tuple[str, Any]:
    """One setting string -> (canonical name, intervention object or None for the baseline).

    Grammar: ``baseline`` | ``KIND:key=value,key=value``. Omitted keys take the defaults.

    * ``paper`` / ``placebo``: ``alpha``, ``beta``, ``k`` (placebo also ``seed``);
      ``sra``: the fields of ``SRATransition``.
    * ``temperature``: ``tau`` (required), ``layers`` (``a-b``, inclusive; default the last half).
    * ``calibration`` / ``calibration_placebo``: ``strength`` (default 1), ``layers``, placebo
      ``seed``; needs ``profiles["position_bias"]`` (``PositionBias.to_json()``).
    * ``emphasis`` / ``emphasis_placebo``: ``top`` (required: the best ``top`` heads of
      ``profiles["head_ranking"][target]``), ``alpha`` (default 0.01), ``target``
      (``document`` or ``instruction``); the placebo's ``placebo`` (``heads`` for the
      document, ``span`` for the instruction by default; see ``EmphasisSteering``).

    Placebo kinds take ``seed`` (default 0).

    Args:
        text: the setting string.
        profiles: what the development profiling measured (stored in the selection file).

    Raises:
        SettingError: unknown kind or key, a value of the wrong type, invalid parameters, or
            a profile the setting needs and ``profiles`` lacks.
    """
    text = text.strip()
    if text == "baseline":
        return "baseline", None
    kind, _, body = text.partition(":")
    if kind not in _SETTING_KEYS:
        kinds = ["baseline", *_SETTING_KEYS]
        raise SettingError(f"in {text!r}: {choice_message('setting kind', kind, kinds)}")
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SETTING_KEYS[kind]:
            keys = _SETTING_KEYS[kind]
            raise SettingError(f"bad parameter {item!r} in {text!r}; {kind} takes {', '.join(keys)}"
                               f"{suggestion(key, keys)}")
        if key in params:
            raise SettingError(f"{key} is given twice in {text!r}")
        try:
            params[key] = _SETTING_KEYS[kind][key](value.strip())
        except UnknownChoiceError as err:
            raise SettingError(f"bad value {value!r} for {key} in {text!r}: {err}") from None
        except ValueError:
            raise SettingError(f"bad value {value!r} for {key} in {text!r}") from None
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in params]
    if missing:
        raise SettingError(f"{text!r} needs {', '.join(missing)}")
    try:
        intervention, canonical = _build(kind, params, profiles)
    except ValueError as err:
        raise SettingError(f"invalid {text!r}: {err}") from None
    return kind + ":" + ",".join(f"{k}={v}" for k, v in sorted(canonical.items())), intervention


def _build(kind: str, params: dict[str, Any], profiles: dict[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """The intervention of a parsed setting and its canonical parameters (defaults filled in)."""
    from at_probe.interventions.transition import PaperTransition, PlaceboTransition, SRATransition

    if kind in ("paper", "placebo", "sra"):
        cls = {"paper": PaperTransition, "placebo": PlaceboTransition, "sra": SRATransition}[kind]
        transition = cls(**{_FIELD.get(k, k): v for k, v in params.items()})
        values = {k: getattr(transition, _FIELD.get(k, k)) for k in _SETTING_KEYS[kind]}
        return transition, {k: v for k, v in values.items() if v is not None}
    layers = params.get("layers")
    canonical = {**params, **({"layers": f"{layers[0]}-{layers[-1]}"} if layers else {})}
    seed = params.get("seed", PLACEBO_SEED) if kind.endswith("_placebo") else None
    if seed is not None:
        canonical["seed"] = seed
    if kind == "temperature":
        from at_probe.interventions.temperature import AttentionTemperature

        return AttentionTemperature(tau=params["tau"], layers=layers), canonical
    if kind.startswith("calibration"):
        from at_probe.interventions.calibration import PositionBias, PositionCalibration

        bias = _profile(profiles, "position_bias", kind)
        strength = params.get("strength", 1.0)
        edit = PositionCalibration(PositionBias.from_json(bias), strength=strength, layers=layers, placebo_seed=seed)
        return edit, {**canonical, "strength": edit.strength}
    from at_probe.interventions.emphasis import EmphasisSteering, top_heads

    target = params.get("target", "document")
    ranking = _profile(profiles, "head_ranking", kind).get(target)
    if ranking is None:
        raise ValueError(f"the head profile has no ranking for target {target!r}")
    placebo = params.get("placebo", "heads" if target == "document" else "span") if seed is not None else "span"
    edit = EmphasisSteering(top_heads(ranking, params["top"]), alpha=params.get("alpha", 0.01), target=target,
                            placebo_seed=seed, placebo=placebo)
    canonical = {**canonical, "alpha": edit.alpha, "target": target}
    return edit, {**canonical, "placebo": placebo} if seed is not None else canonical


def _profile(profiles: dict[str, Any] | None, key: str, kind: str) -> Any:
    if not profiles or key not in profiles:
        raise ValueError(f"{kind} settings need the development profile {key!r}: run "
                         "analyses/alternatives_select.py and pass its selection.json (--selection)")
    return profiles[key]


def parse_settings(text: str, profiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """``;``-separated settings -> {canonical name: intervention or None}, in order, no duplicates
    (``profiles`` as in ``parse_setting``)."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, transition = parse_setting(part, profiles)
        if name in out:
            raise SettingError(f"setting {part!r} appears twice")
        out[name] = transition
    if not out:
        raise SettingError("no settings given")
    return out


def check_settings(settings: dict[str, Any], model: Any) -> None:
    """Check every setting against the model before a run starts: layers, heads and profiles.

    Each intervention builds its hooks for ``model`` (a loaded model, or the
    ``at_probe.models.loading.ModelShape`` that ``model_shape`` reads from the config without the
    weights), which validates its layers and heads against ``model.cfg`` and its profiles
    (a position bias's layers, an emphasis ranking's heads) against the model; the hooks are
    thrown away. A run calls this before its manifest names the settings, so a setting that
    cannot run fails at once instead of after the others' units.

    Args:
        settings: ``{canonical name: intervention or None}`` (``parse_settings``).
        model: anything with ``cfg.n_layers`` and ``cfg.n_heads``.

    Raises:
        SettingError: a setting that does not fit the model (names it and the reason).
    """
    for name, intervention in settings.items():
        if intervention is None:
            continue
        try:
            intervention.hooks(model, prompts=[])  # no prompts: the hooks are built, never run
        except ValueError as err:
            raise SettingError(f"{name!r} does not fit the model ({model.cfg.n_layers} layers, "
                               f"{model.cfg.n_heads} heads): {err}") from None


# ---------------------------------------------------------------------------------------------
# Choosing settings on development documents (the experiment's only selection step)
# ---------------------------------------------------------------------------------------------

PAPER_EXAMPLE = "paper:alpha=1,beta=0.5,k=2"
"""The paper's own example setting."""

PAPER_GRID: tuple[str, ...] = tuple(
    f"paper:alpha={a},beta={b},k={k}"
    for a in (0.5, 1, 1.5) for b in (0.1, 0.3, 0.5, 0.8, 1.0, 1.5) for k in (1, 2, 3, 4)
)
"""The paper's grid: alpha x beta x K (72 settings)."""

SRA_CANDIDATES: tuple[str, ...] = (
    "sra:",  # the public defaults of the authors' code
    "sra:begin_length=5,threshold_len=50,elimi_factor_inter=0.5,elimi_factor_outer=0.5,"
    "strengthen_factor_inter=5,strengthen_factor_outer=5",  # the authors' worked example
)
"""The SRA settings of the development sweep: the defaults and the worked example."""

PLACEBO_SEED = 0


def development_sweep_settings() -> dict[str, Any]:
    """Baseline, the paper grid and the SRA candidates, by canonical name."""
    return parse_settings(";".join(("baseline", *PAPER_GRID, *SRA_CANDIDATES)))


_PLACEBO_KIND = {"paper": "placebo", "emphasis": "emphasis_placebo", "calibration": "calibration_placebo"}


def placebo_of(setting: str, seed: int = PLACEBO_SEED, profiles: dict[str, Any] | None = None,
               emphasis_placebo: Literal["heads", "span"] | None = None) -> str:
    """The placebo twin of a paper, emphasis or calibration setting string (canonical name).

    Paper: the same rows and mass, random targets; emphasis: random heads in the same layers
    (the document's default) or a random span of the same length (the instruction's default;
    ``emphasis_placebo="heads"`` or ``"span"`` picks one); calibration: the same weights
    shuffled across regions.
    """
    name, _ = parse_setting(setting, profiles)
    kind, _, body = name.partition(":")
    if kind not in _PLACEBO_KIND:
        raise SettingError(f"{setting!r} has no placebo (only {', '.join(_PLACEBO_KIND)} settings do)")
    if emphasis_placebo is not None:
        if kind != "emphasis":
            raise SettingError(f"emphasis_placebo applies to emphasis settings, not {setting!r}")
        body += f",placebo={emphasis_placebo}"
    return parse_setting(f"{_PLACEBO_KIND[kind]}:{body},seed={seed}", profiles)[0]
