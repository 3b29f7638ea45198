"""at_probe: probe and apply Attention Transition (arXiv 2307.13365) on Llama models.

Built on TransformerLens' ``TransformerBridge``. The subpackages, lowest layer first (imports
point down only; ``docs/design.md``): ``runs`` (run directories, sweeps, statistics, figures),
``models`` (loading, prompts, hook names), ``flow`` (the probe, knockout, attribution),
``interventions`` (the transitions and their alternatives, one registry), ``xsum`` (the XSum
experiment), ``longctx`` (the long-context retrieval bench), ``cli`` (the commands).
``chunked_attention`` runs attention over blocks of query rows (the whole context, exactly).

The flat module paths of at_probe 0.2 (``at_probe.transition``, ``at_probe.loading``, ...) keep
working: they name the same module objects as the new paths (``MOVED``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

from at_probe.flow.probe import FlowProbe, FlowResult
from at_probe.interventions.transition import (
    PaperTransition,
    PlaceboTransition,
    SRATransition,
    dispense,
    paper_schedule,
    sra_layer,
)
from at_probe.models.chunked import chunked_attention, query_block
from at_probe.models.loading import DEFAULT_MODEL, TINY_MODEL_DIR, load_model
from at_probe.models.prompts import Prompt, build_prompt

__version__ = "0.2.0"

MOVED: dict[str, str] = {
    "attribution": "flow.attribution", "blocks": "models.blocks", "calibration": "interventions.calibration",
    "choices": "runs.choices", "cliargs": "cli.args", "corpus": "flow.corpus",
    "emphasis": "interventions.emphasis", "hooked": "models.hooked", "intervention": "interventions.base",
    "judgements": "xsum.judgements", "knockout": "flow.knockout", "loading": "models.loading",
    "memory": "runs.memory", "names": "models.names", "ops": "flow.ops", "plotting": "runs.plotting",
    "probe": "flow.probe", "prompts": "models.prompts", "runfiles": "runs.runfiles",
    "seeding": "runs.seeding", "selection": "xsum.selection", "semantic": "xsum.semantic",
    "smollm2": "models.smollm2", "stats": "runs.stats", "sweep": "runs.sweep",
    "temperature": "interventions.temperature", "text_metrics": "xsum.metrics",
    "transition": "interventions.transition",
}
"""Old flat module name -> its place in the subpackages (``at_probe.<old>`` imports the new module)."""


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``import at_probe.<old>`` to the moved module itself (one module object, so
    ``monkeypatch`` and ``isinstance`` see the same thing under both names), lazily."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(f"{__name__}.")
        if old == fullname or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec] = {}  # moved module's name -> its spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{__name__}.{MOVED[spec.name.removeprefix(f'{__name__}.')]}")
        self._own_specs[module.__name__] = module.__spec__  # the import system overwrites it next
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._own_specs.pop(module.__name__)


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> ModuleType:
    """``at_probe.transition`` and the other old names as attributes (imported on first use)."""
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MODEL",
    "TINY_MODEL_DIR",
    "FlowProbe",
    "FlowResult",
    "PaperTransition",
    "PlaceboTransition",
    "Prompt",
    "SRATransition",
    "__version__",
    "build_prompt",
    "chunked_attention",
    "dispense",
    "load_model",
    "paper_schedule",
    "query_block",
    "sra_layer",
]
