"""XSum data: the paper's release format, the held-out split, prompts.

The release accompanying arXiv 2307.13365 is a JSON list of records with at least
``document``, ``summary`` and ``id`` (see ``../shared/data/xsum-at-release/README.md``).
Files may be gzipped (``.json.gz``) or plain JSON.

Example:
    >>> from at_probe.xsum import load_records, is_heldout
    >>> recs = load_records("../shared/data/xsum-at-release/token_800_evaluation.json.gz")
    >>> held = [r for r in recs if is_heldout(r["id"])]
    >>> fixed = load_records(path, fix_text=True)   # mojibake repaired (ftfy); fixed.repaired: ids
"""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from at_probe.choices import UnknownChoiceError, check_choice, choice_message, suggestion
from at_probe.prompts import build_prompts, continuation_ids

if TYPE_CHECKING:
    from at_probe.sweep import FunctionWorker

BUCKETS: tuple[str, ...] = ("800", "1200", "1600", "1900")
"""The release's length buckets (approximate LLaMA token counts)."""


def is_heldout(doc_id: str | int) -> bool:
    """Whether an XSum document is held out from the tiny model's training.

    The rule is ``int(id) % 4 == 0``: about a quarter of the release, used for every
    evaluation of the embedded tiny model and never seen in its training.
    """
    return int(doc_id) % 4 == 0


def is_development(doc_id: str | int) -> bool:
    """Whether a document may be used to choose settings (``int(id) % 4 != 0``, never the test)."""
    return not is_heldout(doc_id)


TEXT_FIELDS: tuple[str, ...] = ("document", "summary")
"""The fields of a release record that the text repair (``fix_text``) rewrites."""


class ReleaseRecords(list[dict[str, Any]]):
    """The records of a release file (a list of dicts) and ``repaired``: the ids of the records
    whose text ``load_records(..., fix_text=True)`` changed (empty without the repair)."""

    repaired: tuple[str, ...] = ()


def repair_text(text: str) -> str:
    """``text`` with its mojibake repaired by ftfy's encoding fixes alone (``ftfy.fix_encoding``):
    UTF-8 that was read as Windows-1252 or Latin-1, once or more, becomes the intended characters
    (``Â£`` -> ``£``, ``â€¦`` -> ``…``, ``Ã©`` -> ``é``). Quotes, character widths, line breaks
    and HTML entities stay as they are; text without mojibake is returned unchanged."""
    import ftfy

    return ftfy.fix_encoding(text)


def text_repair_manifest(fix_text: bool) -> dict[str, Any]:
    """The manifest entries of a run's text repair: ``fix_text``, and ftfy's version when on
    (another version may repair differently, so a resumed run must use the same)."""
    if not fix_text:
        return {"fix_text": False}
    from importlib.metadata import version

    return {"fix_text": True, "ftfy_version": version("ftfy")}


def repair_note(records: ReleaseRecords, used: Sequence[dict[str, Any]]) -> str:
    """One line for a command's output: how many of the documents it ``used`` the repair changed."""
    ids = {str(d["id"]) for d in used}
    return (f"--fix-text: repaired the text of {len(ids & set(records.repaired))} of the {len(ids)} "
            f"documents used ({len(records.repaired)} of the {len(records)} records in the file)")


def load_records(path: str | Path, *, fix_text: bool = False) -> ReleaseRecords:
    """Read a release file (``.json`` or ``.json.gz``) into a list of records.

    The release as published has mojibake (double-encoded UTF-8) in 28-38 of the 200 records of
    each bucket. ``fix_text=True`` repairs the ``TEXT_FIELDS`` of every record (``repair_text``)
    and lists the records it changed in ``repaired``; off by default, so that runs made without
    it stay reproducible.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON list of records with ``document`` and ``id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such XSum file: {path}")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            records = json.load(fh)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file: {err}") from err
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and "document" in r and "id" in r for r in records
    ):
        raise ValueError(f"{path}: expected a JSON list of records with 'document' and 'id'")
    records = ReleaseRecords(records)
    if fix_text:
        repaired = []
        for record in records:
            fixed = {k: repair_text(record[k]) for k in TEXT_FIELDS if isinstance(record.get(k), str)}
            if any(record[k] != v for k, v in fixed.items()):
                record.update(fixed)
                repaired.append(str(record["id"]))
        records.repaired = tuple(repaired)
    return records


def bucket_file(data_dir: str | Path, bucket: str) -> Path:
    """Path of a bucket's release file, ``token_<B>_evaluation.json.gz``, in ``data_dir``.

    Raises:
        UnknownChoiceError: a bucket not in ``BUCKETS``.
    """
    check_choice("XSum bucket", str(bucket), BUCKETS)
    return Path(data_dir) / f"token_{bucket}_evaluation.json.gz"


def release_files(data_dir: str | Path) -> dict[str, Path]:
    """Map each bucket (``"800"`` ...) to its release file in ``data_dir``; all must exist."""
    files = {b: bucket_file(data_dir, b) for b in BUCKETS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing release files: {', '.join(missing)}")
    return files


def load_all_documents(data_dir: str | Path) -> list[dict[str, Any]]:
    """All records of the four evaluation buckets, each tagged with its ``bucket``."""
    out = []
    for bucket, path in release_files(data_dir).items():
        for rec in load_records(path):
            out.append({**rec, "bucket": bucket})
    return out


# ---------------------------------------------------------------------------------------------
# Settings: "baseline", "paper:alpha=1,beta=0.5,k=2", "sra:threshold_len=200,...", "placebo:..."
# ---------------------------------------------------------------------------------------------


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
    from at_probe.emphasis import TARGETS

    return check_choice("emphasis target", text, TARGETS)


def _placebo_kind(text: str) -> str:
    from at_probe.emphasis import PLACEBOS

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
"""The alternative interventions (``at_probe.emphasis``, ``.calibration``, ``.temperature``)."""


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
    from at_probe.transition import PaperTransition, PlaceboTransition, SRATransition

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
        from at_probe.temperature import AttentionTemperature

        return AttentionTemperature(tau=params["tau"], layers=layers), canonical
    if kind.startswith("calibration"):
        from at_probe.calibration import PositionBias, PositionCalibration

        bias = _profile(profiles, "position_bias", kind)
        strength = params.get("strength", 1.0)
        edit = PositionCalibration(PositionBias.from_json(bias), strength=strength, layers=layers, placebo_seed=seed)
        return edit, {**canonical, "strength": edit.strength}
    from at_probe.emphasis import EmphasisSteering, top_heads

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
    ``at_probe.loading.ModelShape`` that ``model_shape`` reads from the config without the
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


def _mean_nll(rows: list[dict[str, Any]]) -> tuple[dict[str, float], int]:
    """Mean ``summary_nll`` per setting over the documents scored under every setting.

    Raises:
        ValueError: a ``summary_nll`` that is not a finite number (named with its setting and
            document: a NaN mean would otherwise win every ``min``), or no document scored
            under every setting.
    """
    import math
    import numbers

    import numpy as np

    by_setting: dict[str, dict[str, float]] = {}
    for r in rows:
        nll = r["summary_nll"]
        if isinstance(nll, bool) or not isinstance(nll, numbers.Real) or not math.isfinite(nll):
            raise ValueError(f"setting {r['setting']!r} has summary_nll {nll!r} on document {r['doc_id']}: "
                             "selection needs a finite score for every document")
        by_setting.setdefault(r["setting"], {})[r["doc_id"]] = float(nll)
    docs = set.intersection(*(set(v) for v in by_setting.values())) if by_setting else set()
    if not docs:
        raise ValueError("no document is scored under every development setting")
    return {name: float(np.mean([v[d] for d in sorted(docs)])) for name, v in by_setting.items()}, len(docs)


def minus_baseline(rows: list[dict[str, Any]], docs: list[str]) -> dict[str, dict[str, Any]]:
    """Each setting's paired ``summary_nll`` difference from the baseline on ``docs``: mean and
    bootstrap 95% interval over documents (``Estimate.to_dict()``).

    Raises:
        ValueError: a NaN or infinite score (named with its setting; never left out).
    """
    import numpy as np

    from at_probe.stats import bootstrap_mean

    table: dict[str, dict[str, float]] = {}
    for r in rows:
        table.setdefault(r["setting"], {})[r["doc_id"]] = r["summary_nll"]
    base = np.array([table["baseline"][d] for d in docs], dtype=float)
    out = {}
    for name, v in table.items():
        try:
            diff = np.array([v[d] for d in docs], dtype=float) - base
            out[name] = bootstrap_mean(diff, missing="raise").to_dict()
        except ValueError as err:
            raise ValueError(f"summary_nll of {name!r} minus the baseline: {err}") from None
    return out


def select_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper and SRA settings with the lowest mean ``summary_nll`` on the development rows.

    Only documents scored under every setting count, so every mean is over the same documents.
    Ties go to the setting listed first (the grid's order).

    Args:
        rows: ``{"doc_id", "setting", "summary_nll"}`` records of the development sweep.

    Returns:
        ``{"paper": name, "sra": name, "n_documents": int, "mean_nll": {setting: float}}``.

    Raises:
        ValueError: a ``summary_nll`` that is not finite (the message names the setting), no
            document scored under every setting, or no paper or SRA setting.
    """
    mean, n_docs = _mean_nll(rows)

    def best(kind: str) -> str:
        names = [n for n in mean if n.startswith(kind + ":")]
        if not names:
            raise ValueError(f"the development sweep has no {kind} setting")
        return min(names, key=lambda n: mean[n])

    return {"paper": best("paper"), "sra": best("sra"), "n_documents": n_docs, "mean_nll": mean}


def setting_roles(selection: dict[str, Any]) -> dict[str, str]:
    """The test run's settings by role (a setting may fill two roles).

    A transitions' selection (``{"paper", "sra"}``): ``baseline``, ``paper_example``,
    ``paper_selected``, ``placebo_example``, ``placebo_selected``, ``sra_selected``.
    An alternatives' selection (``{"selected": {method: setting}, "profiles"}``):
    ``baseline``, then ``<method>_selected`` for each method and ``<method>_placebo`` for the
    methods with a placebo (emphasis, calibration); emphasis also has ``emphasis_span_placebo``,
    a random span of the emphasised part's length (the same setting as ``emphasis_placebo``
    when the instruction is emphasised; random heads are the document's default placebo).
    """
    if "selected" in selection:
        profiles = selection.get("profiles")
        roles = {"baseline": "baseline"}
        for method, setting in selection["selected"].items():
            roles[f"{method}_selected"] = setting
            if method in _PLACEBO_KIND:
                roles[f"{method}_placebo"] = placebo_of(setting, profiles=profiles)
            if method == "emphasis":
                span = placebo_of(setting, profiles=profiles, emphasis_placebo="span")
                roles["emphasis_span_placebo"] = span
        return roles
    example = parse_setting(PAPER_EXAMPLE)[0]
    return {"baseline": "baseline", "paper_example": example, "paper_selected": selection["paper"],
            "placebo_example": placebo_of(example), "placebo_selected": placebo_of(selection["paper"]),
            "sra_selected": selection["sra"]}


PLACEBO_ROLES: frozenset[str] = frozenset({"placebo_example", "placebo_selected", "emphasis_placebo",
                                           "emphasis_span_placebo", "calibration_placebo"})
"""The roles of ``setting_roles`` that are controls drawn at random (a ``seed``)."""


def placebo_draws(roles: dict[str, str], seeds: int, profiles: dict[str, Any] | None = None
                  ) -> dict[str, list[str]]:
    """Each placebo role's settings for seeds ``0 .. seeds - 1`` (canonical names; seed 0 first,
    the role's own setting), so a report can pool independent draws of the control.

    Raises:
        SettingError: ``seeds < 1``, or a placebo role whose setting has no seed.
    """
    if seeds < 1:
        raise SettingError(f"seeds must be >= 1, got {seeds}")
    out = {}
    for role, setting in roles.items():
        if role not in PLACEBO_ROLES:
            continue
        kind, _, body = setting.partition(":")
        params = [p for p in body.split(",") if p and not p.startswith("seed=")]
        if len(params) == len(body.split(",")):
            raise SettingError(f"the placebo role {role} has no seed in {setting!r}")
        out[role] = [parse_setting(f"{kind}:{','.join([*params, f'seed={s}'])}", profiles)[0]
                     for s in range(seeds)]
        if out[role][0] != setting:
            raise SettingError(f"the placebo role {role} is {setting!r}, not seed 0 ({out[role][0]!r})")
    return out


def canonical_selection(selection: dict[str, Any]) -> dict[str, Any]:
    """A selection with its chosen settings rewritten as canonical names (profiles kept)."""
    profiles = selection.get("profiles")
    if "selected" in selection:
        return {"selected": {m: parse_setting(v, profiles)[0] for m, v in selection["selected"].items()},
                "profiles": profiles}
    return {"paper": parse_setting(selection["paper"])[0], "sra": parse_setting(selection["sra"])[0]}


def run_settings(selection: dict[str, Any]) -> list[str]:
    """The test run's settings (canonical names, each once): the values of ``setting_roles``."""
    return list(dict.fromkeys(setting_roles(selection).values()))


ALTERNATIVES_GRID: dict[str, tuple[str, ...]] = {
    "emphasis": tuple(f"emphasis:alpha=0.01,target={t},top={k}" for t in ("document", "instruction")
                      for k in (1, 2, 4, 8, 16)),
    "calibration": tuple(f"calibration:strength={s}" for s in (0.25, 0.5, 1)),
    "temperature": tuple(f"temperature:tau={t}" for t in (0.7, 0.85, 1.15, 1.3)),
}
"""The alternatives' development grid (PASTA's alpha = 0.01; FitM's last half of the layers)."""


def select_alternatives(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per method, the setting with the lowest mean ``summary_nll`` over documents scored under
    every setting (ties: the first listed). Returns ``{"selected", "n_documents", "mean_nll"}``.

    Raises:
        ValueError: as ``select_settings`` (a non-finite ``summary_nll`` names its setting), or
            a method without a setting.
    """
    means, n_docs = _mean_nll(rows)
    selected = {}
    for method in methods:
        names = [n for n in means if n.split(":", 1)[0] == method]
        if not names:
            raise ValueError(f"the development sweep has no {method} setting")
        selected[method] = min(names, key=lambda n: means[n])
    return {"selected": selected, "n_documents": n_docs, "mean_nll": means}


# ---------------------------------------------------------------------------------------------
# Generation and teacher-forced scoring (batched, left padding)
# ---------------------------------------------------------------------------------------------


def left_pad(model: Any, rows: list[list[int]]) -> tuple[Any, Any]:
    """Left-padded ``(input_ids, attention_mask)`` long tensors ``[len(rows), longest row]`` on
    the model's device; no rows give two ``[0, 0]`` tensors.

    Raises:
        ValueError: an empty row (it would attend to nothing).
    """
    import torch

    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        raise ValueError(f"rows {empty} are empty: every sequence needs at least one token")
    width = max(map(len, rows), default=0)
    pad = model.tokenizer.pad_token_id
    shape = (len(rows), width)  # kept for no rows, where torch.tensor([]) would be 1-d
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in rows], dtype=torch.long, device=model.cfg.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], dtype=torch.long,
                        device=model.cfg.device)
    return ids.reshape(shape), mask.reshape(shape)


def prompt_limit(model: Any, max_prompt_tokens: int | None, room: int) -> int:
    """Most prompt tokens allowed: ``max_prompt_tokens`` (default the model's context) minus the
    ``room`` kept for what follows the prompt. ``summarise`` and ``reference_nll`` both use it
    with the same ``room``, so a document is cut the same way in both.

    Raises:
        ValueError: ``max_prompt_tokens`` below 1 (None, not 0, means the model's context).
    """
    return _context(model, max_prompt_tokens) - room


def _context(model: Any, max_prompt_tokens: int | None) -> int:
    """``max_prompt_tokens``, or the model's context when None."""
    if max_prompt_tokens is None:
        return int(model.cfg.n_ctx)
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be at least 1 (None for the model's context), "
                         f"got {max_prompt_tokens}")
    return max_prompt_tokens


def _same_length(documents: Sequence[str], references: Sequence[str]) -> None:
    if len(documents) != len(references):
        raise ValueError(f"{len(documents)} documents but {len(references)} references: "
                         "one reference per document")


def summarise(model: Any, documents: list[str], transition: Any, *, max_new_tokens: int = 50,
              max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy continuations (new tokens only, cut at EOS) of each document's prompt.

    Prompts come from ``at_probe.prompts.build_prompt`` (the chat template when the tokenizer
    has one, else the paper's plain prompt), the document cut at its end to fit.

    The intervention (a transition, an alternative of ``at_probe.intervention``, or None) gets
    the batch's prompts and acts on each prompt's own rows. Rows of a batch get what they would
    get alone (left padding with an attention mask). No documents give ``[]``.
    """
    import torch

    if not documents:
        return []
    prompts = build_prompts(model.tokenizer, documents, max_tokens=prompt_limit(model, max_prompt_tokens,
                                                                               max_new_tokens))
    input_ids, mask = left_pad(model, [list(p.ids) for p in prompts])
    ctx = contextlib.nullcontext() if transition is None else transition.applied(model, prompts=prompts)
    with ctx, torch.inference_mode():
        out = model.generate(input_ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             stop_at_eos=True, verbose=False)
    eos = model.tokenizer.eos_token_id
    texts = []
    for row in out[:, input_ids.shape[1] :].tolist():
        if eos in row:
            row = row[: row.index(eos)]
        texts.append(model.tokenizer.decode(row, skip_special_tokens=True))
    return texts


def reference_nll(model: Any, documents: list[str], references: list[str], transition: Any,
                  *, max_new_tokens: int = 50, max_prompt_tokens: int | None = None) -> list[float]:
    """Teacher-forced mean NLL (nats/token) of each reference given its prompt, setting active.

    Prompts are cut exactly as ``summarise`` cuts them with the same ``max_new_tokens`` and
    ``max_prompt_tokens`` (``prompt_limit``), whatever the other references of the batch.
    A transition edits prompt rows only, never the reference's; the alternatives treat the
    reference rows as they treat generated tokens. No documents give ``[]``.

    Raises:
        ValueError: ``documents`` and ``references`` differ in length, a reference without
            tokens (empty or whitespace: its NLL is undefined), or a prompt and its reference
            that do not fit in ``max_prompt_tokens`` (the context).
    """
    import torch

    _same_length(documents, references)
    if not documents:
        return []
    tok = model.tokenizer
    refs = [continuation_ids(tok, r) for r in references]
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"references {empty} have no tokens: a teacher-forced NLL needs at least one")
    limit = prompt_limit(model, max_prompt_tokens, max_new_tokens)
    prompts = build_prompts(model.tokenizer, documents, max_tokens=limit)
    prompts_ids = [list(p.ids) for p in prompts]
    total = _context(model, max_prompt_tokens)
    too_long = [i for i, (p, r) in enumerate(zip(prompts_ids, refs)) if len(p) + len(r) > total]
    if too_long:
        raise ValueError(f"references {too_long} do not fit after their prompts in {total} tokens; "
                         f"raise max_new_tokens above {max(len(refs[i]) for i in too_long)}")
    ids, mask = left_pad(model, [p + r for p, r in zip(prompts_ids, refs)])
    hooks = [] if transition is None else transition.hooks(model, prompts=prompts)
    width = ids.shape[1]
    with torch.inference_mode():
        logits = model.run_with_hooks(ids, attention_mask=mask, fwd_hooks=hooks)
        out = []
        for i, ref in enumerate(refs):  # log-softmax only on the rows that predict the reference
            n = len(ref)
            logp = logits[i, width - n - 1 : width - 1].float().log_softmax(-1)
            out.append(float(-logp.gather(-1, ids[i, width - n :, None]).mean()))
    return out


# ---------------------------------------------------------------------------------------------
# Sweep workers (``at_probe.sweep``): load the model once, then compute units of documents
# ---------------------------------------------------------------------------------------------


OPTIONAL_METRICS: tuple[str, ...] = ("source_position_mean",)
"""Metrics of ``score_summary`` that are undefined (None) for some outputs: the mean source
position when the output copies no n-gram of the document. Reports leave those documents out of
these metrics' estimates and count them (``missing="drop"``, ``n_missing``); every other metric
must be defined for every document."""

PRIMARY_METRIC = "semantic_similarity"
"""The XSum experiment's primary metric, declared in the README before the results were seen:
cosine similarity of a summary to its reference (``at_probe.semantic``). ``xsum_eval.py`` does
not compute it: ``xsum_experiment.py`` scores a run's outputs into the run's
``at_probe.semantic.SCORES_FILE``, which every report of the run reads and lists first."""


def score_summary(output: str, record: dict[str, Any], *, rouge_tokenizer: str = "default") -> dict[str, Any]:
    """Judge-free measures of a summary against its release record (reference and document);
    ``rouge_tokenizer`` as ``text_metrics.rouge``'s ``tokenizer`` (``"default"``: ASCII only)."""
    from at_probe import text_metrics

    positions = text_metrics.source_positions(output, record["document"])
    return {
        **text_metrics.rouge(output, record["summary"], tokenizer=rouge_tokenizer),
        "repetition_4gram": text_metrics.repetition_rate(output),
        "novel_bigrams": text_metrics.novel_bigram_share(output, record["document"]),
        "source_position_mean": sum(positions) / len(positions) if positions else None,
        "source_ngrams_matched": len(positions),
    }


@dataclass(frozen=True)
class SummaryWorkerFactory:
    """Worker of ``xsum_eval.py``: greedy summary, its scores and ``summary_nll`` per document.

    ``settings`` is the run's settings string (parsed again in each worker process, with the
    development ``profiles`` the alternatives need); ``rouge_tokenizer`` as ``score_summary``'s.
    """

    model: str
    device: str | None
    settings: str
    max_new_tokens: int
    profiles: dict[str, Any] | None = None
    rouge_tokenizer: str = "default"

    def __call__(self) -> FunctionWorker:
        from at_probe.loading import load_model, model_description
        from at_probe.sweep import FunctionWorker

        model = load_model(self.model, device=self.device)
        transitions = parse_settings(self.settings, self.profiles)

        def run(unit: Any) -> list[dict[str, Any]]:
            t0 = time.perf_counter()
            documents = [d["document"] for d in unit.docs]
            transition = transitions[unit.setting]
            outputs = summarise(model, documents, transition, max_new_tokens=self.max_new_tokens)
            nlls = reference_nll(model, documents, [d["summary"] for d in unit.docs], transition,
                                 max_new_tokens=self.max_new_tokens)
            seconds = (time.perf_counter() - t0) / len(unit.docs)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "output": o,
                     **score_summary(o, d, rouge_tokenizer=self.rouge_tokenizer),
                     "summary_nll": nll, "wall_seconds": seconds} for d, o, nll in zip(unit.docs, outputs, nlls)]

        return FunctionWorker(model_description(model), run)


@dataclass(frozen=True)
class NLLWorkerFactory:
    """Worker of the development sweeps (``xsum_select.py``): ``summary_nll`` per document.

    ``settings`` (with ``profiles``) names the settings; None means the transitions' sweep
    (``development_sweep_settings``).
    """

    model: str
    device: str | None
    max_new_tokens: int
    settings: str | None = None
    profiles: dict[str, Any] | None = None

    def __call__(self) -> FunctionWorker:
        from at_probe.loading import load_model, model_description
        from at_probe.sweep import FunctionWorker

        model = load_model(self.model, device=self.device)
        transitions = (development_sweep_settings() if self.settings is None
                       else parse_settings(self.settings, self.profiles))

        def run(unit: Any) -> list[dict[str, Any]]:
            nlls = reference_nll(model, [d["document"] for d in unit.docs], [d["summary"] for d in unit.docs],
                                 transitions[unit.setting], max_new_tokens=self.max_new_tokens)
            return [{"doc_id": str(d["id"]), "setting": unit.setting, "summary_nll": nll}
                    for d, nll in zip(unit.docs, nlls)]

        return FunctionWorker(model_description(model), run)
