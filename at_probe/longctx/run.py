"""The bench's runs: prompt specs planned the same way every time, and the sweep worker.

A run directory holds ``manifest.json`` and ``records.jsonl`` (one line per prompt and setting)
like the XSum runs (``at_probe.runs.sweep``): resumable, one driver, units fanned out on Ray.
A unit is one prompt (its spec carries the whole context text, so a worker needs no data
files) under one setting.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from at_probe.longctx.tasks import build, make_spec
from at_probe.runs.runfiles import json_sha256


def plan_specs(tokenizer: Any, documents: Sequence[str], tasks: Sequence[str], lengths: Sequence[int],
               depths: Sequence[float], prompts: int) -> list[dict[str, Any]]:
    """``prompts`` specs per (task, length): prompt ``i`` at depth ``depths[i % len(depths)]``.

    Length-major, then index, then task (the order units run in): a run stopped early holds the
    shorter, cheaper cells complete and every task's cell of a length equally far along."""
    return [make_spec(tokenizer, documents, task, length=length, depth=depths[i % len(depths)], index=i)
            for length in lengths for i in range(prompts) for task in tasks]


def prompt_hashes(tokenizer: Any, specs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Prompt id -> a short hash (16 hex digits) of what is scored under that id: the spec and
    its prompt's and answer's token ids. A run's manifest keeps them (``prompt_sha256``), so
    that a resumed or a paired run whose prompts came out otherwise (another ``tasks.py``,
    tokenizer or text repair) is refused rather than pooled under the same ids."""
    out = {}
    for spec in specs:
        built = build(tokenizer, spec)
        out[spec["id"]] = json_sha256({"spec": spec, "prompt": list(built.prompt.ids),
                                       "answer": list(built.answer_ids)})[:16]
    return out


def record_of(spec: dict[str, Any], setting: str, scores: dict[str, Any]) -> dict[str, Any]:
    """One record: the prompt's coordinates, the setting and its scores (no prompt text)."""
    keys = ("task", "length", "depth", "index", "answer")
    return {"doc_id": spec["id"], "setting": setting, **{k: spec[k] for k in keys}, **scores}


@dataclass(frozen=True)
class LongctxWorkerFactory:
    """Worker of ``longctx.py``: loads the model (chunked attention of ``attention_rows``) and
    scores each unit's prompts under its setting (``at_probe.longctx.scoring.score``; with the
    needle's knockout estimate if ``knockout``, and a generated reply of up to ``reply_tokens``
    tokens, ``at_probe.longctx.scoring.reply``, if that is not 0)."""

    model: str
    device: str | None
    settings: str
    profiles: dict[str, Any] | None = None
    attention_rows: int | None = None
    knockout: bool = False
    reply_tokens: int = 0

    def __call__(self) -> Any:
        from at_probe.longctx.scoring import reply, score
        from at_probe.models.loading import load_model, model_description
        from at_probe.runs.sweep import FunctionWorker
        from at_probe.xsum.settings import parse_settings

        model = load_model(self.model, device=self.device, attention_rows=self.attention_rows)
        interventions = parse_settings(self.settings, self.profiles)

        def run(unit: Any) -> list[dict[str, Any]]:
            out = []
            for spec in unit.docs:
                t0 = time.perf_counter()
                built, edit = build(model.tokenizer, spec), interventions[unit.setting]
                scores = score(model, built, edit, knockout=self.knockout)
                if self.reply_tokens:
                    scores.update(reply(model, built, edit, self.reply_tokens))
                out.append(record_of(spec, unit.setting, {**scores, "wall_seconds": round(time.perf_counter() - t0, 2)}))
            return out

        return FunctionWorker(model_description(model), run)
