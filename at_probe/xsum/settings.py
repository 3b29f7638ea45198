"""Settings strings: one intervention setting per string (``kind:key=value,...``), their
canonical names, placebo twins and the development grids.

What each kind takes and how it is built comes from ``at_probe.interventions.registry``; this
module is the grammar (``;``, ``:``, ``,``, ``=``, ``baseline``) and its error messages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from at_probe.interventions import registry
from at_probe.interventions.registry import PLACEBO_SEED
from at_probe.runs.choices import UnknownChoiceError, choice_message, suggestion


class SettingError(ValueError):
    """A setting string that cannot be parsed (the message names the bad part)."""


def parse_setting(text: str, profiles: dict[str, Any] | None = None) -> tuple[str, Any]:
    """One setting string -> (canonical name, intervention object or None for the baseline).

    Grammar: ``baseline`` | ``KIND:key=value,key=value``. Omitted keys take the defaults. The
    kinds, their keys, defaults, required keys, profiles and canonical names are those of
    ``at_probe.interventions.registry`` (each method declares them at the bottom of its module):

    * ``paper`` / ``placebo``: ``alpha``, ``beta``, ``k`` (placebo also ``seed``);
      ``sra``: the fields of ``SRATransition``.
    * ``temperature``: ``tau`` (required), ``layers`` (``a-b``, inclusive; default the last half).
    * ``calibration`` / ``calibration_placebo``: ``strength`` (default 1), ``layers``, placebo
      ``seed``; needs ``profiles["position_bias"]`` (``PositionBias.to_json()``).
    * ``emphasis`` / ``emphasis_placebo``: ``top`` (required: the best ``top`` heads of
      ``profiles["head_ranking"][target]``), ``alpha`` (default 0.01), ``target``
      (``document`` or ``instruction``); the placebo's ``placebo`` (``heads`` for the
      document, ``span`` for the instruction by default; see ``EmphasisSteering``).
    * ``sink_scaling``: ``rate`` (required), ``layers`` or ``top``; ``sink_calibration``: ``beta``,
      ``threshold``, ``layers`` or ``top``; with ``top`` they need
      ``profiles["sink_head_ranking"]`` (the ``top`` best heads of the ranking of the rate's
      direction, or of ACT's search). ``adaptive_temperature``: ``layers``;
      ``multiscale_positions``: ``low``, ``high``, ``layers``. The paper's ``parts``
      (``prune+sink``, ...) select parts of the transition.

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
    if kind not in registry.kinds():
        kinds = ["baseline", *registry.kinds()]
        raise SettingError(f"in {text!r}: {choice_message('setting kind', kind, kinds)}")
    method = registry.method(kind)
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in method.keys:
            raise SettingError(f"bad parameter {item!r} in {text!r}; {kind} takes {', '.join(method.keys)}"
                               f"{suggestion(key, method.keys)}")
        if key in params:
            raise SettingError(f"{key} is given twice in {text!r}")
        try:
            params[key] = method.keys[key].parse(value.strip())
        except UnknownChoiceError as err:
            raise SettingError(f"bad value {value!r} for {key} in {text!r}: {err}") from None
        except ValueError:
            raise SettingError(f"bad value {value!r} for {key} in {text!r}") from None
    missing = [k for k, key in method.keys.items() if key.required and k not in params]
    if missing:
        raise SettingError(f"{text!r} needs {', '.join(missing)}")
    try:
        profile = _profile(profiles, method.profile, kind) if method.needs_profile(params) else None
        intervention, name = method.build(params, profile)
    except ValueError as err:
        raise SettingError(f"invalid {text!r}: {err}") from None
    return name, intervention


def _profile(profiles: dict[str, Any] | None, key: str, kind: str) -> Any:
    if not profiles or key not in profiles:
        raise ValueError(f"{kind} settings need the development profile {key!r}: run "
                         "analyses/alternatives_select.py and pass its selection.json")
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


def check_settings(settings: dict[str, Any], model: Any, *, attention_rows: int | None = None) -> None:
    """Check every setting against the model before a run starts: layers, heads and profiles,
    and, for a run under chunked attention (``attention_rows``), that the setting can run there.

    Each intervention builds its hooks for ``model`` (a loaded model, or the
    ``at_probe.models.loading.ModelShape`` that ``model_shape`` reads from the config without the
    weights), which validates its layers and heads against ``model.cfg`` and its profiles
    (a position bias's layers, an emphasis ranking's heads) against the model; the hooks are
    thrown away. A run calls this before its manifest names the settings, so a setting that
    cannot run fails at once instead of after the others' units.

    Args:
        settings: ``{canonical name: intervention or None}`` (``parse_settings``).
        model: anything with ``cfg.n_layers`` and ``cfg.n_heads``.
        attention_rows: the run's chunked attention blocks (``--attention-rows``), or None.

    Raises:
        SettingError: a setting that does not fit the model, or that chunked attention refuses
            (names it and the reason).
    """
    from at_probe.models.chunked import ChunkedAttentionError, marked_chunked

    for name, intervention in settings.items():
        if intervention is None:
            continue
        try:
            with marked_chunked(model, attention_rows):
                intervention.hooks(model, prompts=[])  # no prompts: the hooks are built, never run
        except ValueError as err:
            raise SettingError(f"{name!r} does not fit the model ({model.cfg.n_layers} layers, "
                               f"{model.cfg.n_heads} heads): {err}") from None
        except ChunkedAttentionError as err:
            raise SettingError(f"{name!r} cannot run with --attention-rows {attention_rows}: {err}") from None


def placebo_of(setting: str, seed: int = PLACEBO_SEED, profiles: dict[str, Any] | None = None,
               emphasis_placebo: Literal["heads", "span"] | None = None) -> str:
    """The placebo twin of a setting string (canonical name): the twin kind its method declares
    (``at_probe.interventions.registry.Placebo``), the same keys, and ``seed``.

    Paper: the same rows and mass, random targets; emphasis: random heads in the same layers
    (the document's default) or a random span of the same length (the instruction's default;
    ``emphasis_placebo="heads"`` or ``"span"`` picks one); calibration: the same weights
    shuffled across regions.

    Raises:
        SettingError: a bad setting, a method without a placebo (the message lists those with
            one), or ``emphasis_placebo`` for a setting whose placebo takes no ``placebo`` key.
    """
    name, _ = parse_setting(setting, profiles)
    placebo = _declared_placebo(name)
    if placebo is None:
        having = [k for k in registry.kinds() if registry.method(k).placebo is not None]
        raise SettingError(f"{setting!r} has no placebo (only {', '.join(having)} settings do)")
    extra = {} if emphasis_placebo is None else {"placebo": emphasis_placebo}
    if extra and "placebo" not in registry.method(placebo.kind).keys:
        raise SettingError(f"emphasis_placebo applies to emphasis settings, not {setting!r}")
    return _twin_name(name, placebo.kind, extra, seed, profiles)


def placebo_twins(setting: str, profiles: dict[str, Any] | None = None,
                  seed: int = PLACEBO_SEED) -> dict[str, str]:
    """A setting's placebos by test-run role suffix (``{"placebo": name}``; emphasis also
    ``"span_placebo"``), as its method's ``Placebo.roles`` declare; ``{}`` for a setting without
    one (its method has no twin, or the twin does not apply: ``Placebo.applies``).

    Raises:
        SettingError: a bad setting.
    """
    name, _ = parse_setting(setting, profiles)
    placebo = _declared_placebo(name)
    if placebo is None or not placebo.applies_to(name):
        return {}
    return {suffix: _twin_name(name, placebo.kind, extra, seed, profiles)
            for suffix, extra in placebo.roles.items()}


def _declared_placebo(name: str) -> registry.Placebo | None:
    """The placebo twin the method of a canonical setting name declares (None: none, or the baseline)."""
    kind = name.partition(":")[0]
    return registry.method(kind).placebo if kind in registry.kinds() else None


def _twin_name(name: str, twin: str, extra: Mapping[str, str], seed: int,
               profiles: dict[str, Any] | None) -> str:
    """The canonical name of ``twin`` with the keys of the canonical ``name``, ``extra`` and ``seed``."""
    keys = [name.partition(":")[2], *(f"{k}={v}" for k, v in extra.items()), f"seed={seed}"]
    return parse_setting(f"{twin}:{','.join(keys)}", profiles)[0]


# ---------------------------------------------------------------------------------------------
# The development grids: experiment design, not method description (hence here, not in the
# registry); every name in them is a setting of a registered method
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

ALTERNATIVES_GRID: dict[str, tuple[str, ...]] = {
    "emphasis": tuple(f"emphasis:alpha=0.01,target={t},top={k}" for t in ("document", "instruction")
                      for k in (1, 2, 4, 8, 16)),
    "calibration": tuple(f"calibration:strength={s}" for s in (0.25, 0.5, 1)),
    "temperature": tuple(f"temperature:tau={t}" for t in (0.7, 0.85, 1.15, 1.3)),
    "sink_scaling": (*(f"sink_scaling:rate={r}" for r in (0.5, 0.8, 1.25, 2)),
                     *(f"sink_scaling:rate={r},top={k}" for r in (0.5, 2) for k in (4, 16))),
    "sink_calibration": ("sink_calibration:", "sink_calibration:beta=0.7",
                         *(f"sink_calibration:top={k}" for k in (4, 16))),
    "adaptive_temperature": ("adaptive_temperature:",),
    "multiscale_positions": ("multiscale_positions:", "multiscale_positions:low=1.1,high=1.4",
                             "multiscale_positions:low=1.5,high=2.5"),
}
"""The alternatives' development grid: PASTA's alpha = 0.01; FitM's last half of the layers; the
sink rate both ways on every head and on the profiled best heads (ZeroTuning tunes both); ACT's
beta 0.4 and threshold 0.1 on every head of layers 2..L-2 and on its searched heads; adaptive
temperature as published (no parameter); Ms-PoE's ratios [1.2, 1.8] and a narrower and a wider
range (its layers 2..L-1)."""

ALTERNATIVES: tuple[str, ...] = tuple(registry.method(kind).kind for kind in ALTERNATIVES_GRID)  # registered
"""The alternative interventions, the methods of ``ALTERNATIVES_GRID`` (``at_probe.interventions.emphasis``,
``.calibration``, ``.temperature``, ``.sink_scaling``, ``.sink_calibration``, ``.adaptive_temperature``,
``.multiscale_positions``); their placebos and profiles are the registry's."""

TRANSITION_PARTS: dict[str, tuple[str, ...]] = {
    "prune": ("prune",), "sink": ("sink",), "move": ("move",), "prune_sink": ("prune", "sink"),
    "prune_move": ("prune", "move"), "sink_move": ("sink", "move"), "all": ("prune", "sink", "move"),
}
"""The paper transition taken apart for a test run (``alternatives_select.py --parts-of``): each
part alone, in pairs, and all three (the full version), by the name of their test-run method
``paper_<name>`` (``PaperTransition.parts``)."""


def transition_parts(paper: str) -> dict[str, str]:
    """The canonical settings of ``TRANSITION_PARTS`` of one paper setting, by ``paper_<name>``.

    Raises:
        SettingError: not a ``paper`` setting, or one that already names its parts.
    """
    name, _ = parse_setting(paper)
    kind, keys = registry.setting_parts(name)
    if kind != "paper" or "parts" in keys:
        raise SettingError(f"the parts are taken of a full paper setting, not {paper!r}")
    return {f"paper_{label}": parse_setting(f"{name},parts={'+'.join(parts)}")[0]
            for label, parts in TRANSITION_PARTS.items()}


def development_sweep_settings() -> dict[str, Any]:
    """Baseline, the paper grid and the SRA candidates, by canonical name."""
    return parse_settings(";".join(("baseline", *PAPER_GRID, *SRA_CANDIDATES)))
