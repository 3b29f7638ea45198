"""FlowProbe: how attention moves information across layers, reduced inside the hooks.

During one prefill forward pass the probe's hooks on ``blocks.{l}.attn.hook_pattern`` reduce
each layer's ``[1, head, T, T]`` pattern to small per-layer, per-head measures
(``at_probe.flow.ops``). Memory is ``O(L * H * R^2)`` plus one ``T x T`` working matrix; no layer's
pattern is kept. Attention rollout (Abnar & Zuidema 2020) is an explicit opt-in
(``rollout=True``): it keeps head-averaged ``[L, T, T]`` maps and computes the last token's
rollout row by vector-matrix products at ``result()``.

Passes: a probe describes the latest complete prefill pass. A new full pass after a complete
capture replaces it; a pass that would mix with a partial capture (hooks firing out of order or
over another length) raises, and so does ``result()`` until ``reset()``; decode steps of
``generate`` (one query row against a longer key cache) are ignored.

Hook order: on a shared hook point hooks run in registration order, so
``tr.hooks(model) + probe.hooks()`` lets the probe see the pattern *after* the transition,
and ``probe.hooks() + tr.hooks(model)`` the pattern before it.

Example:
    >>> probe = FlowProbe.for_model(model)          # 8 regions (DEFAULT_REGIONS)
    >>> model.run_with_hooks(tokens, fwd_hooks=tr.hooks(model) + probe.hooks())
    >>> flow = probe.result()
    >>> flow.final_token_profile.shape   # [layer, head, region]
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from at_probe.flow import ops
from at_probe.flow.block_sums import BlockSums
from at_probe.models.chunked import ChunkedAttentionError, query_block, refuse_chunked
from at_probe.models.names import layer_of, pattern_hook, value_hook
from at_probe.runs.runfiles import write_json_atomic

if TYPE_CHECKING:
    import pandas as pd

_PER_HEAD = ("sink_mass", "entropy", "distance")
_SAVED = ("region_bounds", "region_mass", "final_token_profile", *_PER_HEAD, "rollout", "final_token_value_profile")
_MAPS_NEED = ("rollout keeps head-averaged [L, T, T] maps, whole patterns that chunked attention never forms "
              "(each hook holds a block of query rows)")

DEFAULT_REGIONS = 8
"""Document regions of a probe unless told otherwise (ours): ``FlowProbe``, ``flow.py --regions``
and the position-bias estimate share it."""


@dataclass
class FlowResult:
    """Per-layer, per-head flow measures of one sequence (small CPU float32 tensors).

    Attributes:
        region_bounds: ``[regions + 1]`` token boundaries (sink ``[0, 1)`` first).
        region_labels: one label per region: ``"sink"``, then ``"template"``, ``"doc 01"`` ..
            and ``"instruction"`` when the prompt's parts are known, else ``"1-52"`` style
            token ranges.
        region_mass: ``[layer, head, from_region, to_region]`` mean mass per query row.
        final_token_profile: ``[layer, head, region]`` the last token's mass per key region.
        sink_mass: ``[layer, head]`` mean attention on token 0.
        entropy: ``[layer, head]`` mean row entropy (nats).
        distance: ``[layer, head]`` mean query-key distance (tokens).
        rollout: ``[layer, region]`` rollout from the last token back to the regions, or None.
        final_token_value_profile: ``[layer, head, region]`` value-weighted flow into the last
            token (Kobayashi et al. 2020): per key region, the sum of ``a_ij * ||W_O v_j||``
            over its keys, in units of residual-stream norm; None unless asked for.
        maps: ``[layer, T, T]`` head-averaged patterns when kept, else None.
        meta: free-form labels (model, document, condition, ...).
    """

    region_bounds: Tensor
    region_labels: list[str]
    region_mass: Tensor
    final_token_profile: Tensor
    sink_mass: Tensor
    entropy: Tensor
    distance: Tensor
    rollout: Tensor | None = None
    final_token_value_profile: Tensor | None = None
    maps: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.region_mass.shape[0]

    def to_frame(self) -> pd.DataFrame:
        """Tidy frame: one row per (measure, layer, head, region, from_region) value.

        ``head`` is -1 for head-independent measures (rollout); ``region`` / ``from_region``
        are empty where they do not apply.
        """
        import pandas as pd

        rows: list[dict[str, Any]] = []
        labels = self.region_labels
        n_layers, n_heads = self.sink_mass.shape
        for name in _PER_HEAD:
            values = getattr(self, name)
            for l in range(n_layers):
                for h in range(n_heads):
                    rows.append({"measure": name, "layer": l, "head": h, "value": float(values[l, h])})
        for l in range(n_layers):
            for h in range(n_heads):
                for r, lab in enumerate(labels):
                    rows.append({"measure": "final_token_profile", "layer": l, "head": h, "region": lab,
                                 "value": float(self.final_token_profile[l, h, r])})
                    if self.final_token_value_profile is not None:
                        rows.append({"measure": "final_token_value_profile", "layer": l, "head": h,
                                     "region": lab, "value": float(self.final_token_value_profile[l, h, r])})
                    for f, src in enumerate(labels):
                        rows.append({"measure": "region_mass", "layer": l, "head": h, "region": lab,
                                     "from_region": src, "value": float(self.region_mass[l, h, f, r])})
            if self.rollout is not None:
                for r, lab in enumerate(labels):
                    rows.append({"measure": "rollout", "layer": l, "head": -1, "region": lab,
                                 "value": float(self.rollout[l, r])})
        frame = pd.DataFrame(rows)
        for key, value in self.meta.items():
            if isinstance(value, (str, int, float)):
                frame[key] = value
        return frame

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every number (maps excluded: they are large)."""
        out: dict[str, Any] = {"region_labels": self.region_labels, "meta": self.meta}
        for name in _SAVED:
            value = getattr(self, name)
            out[name] = None if value is None else value.tolist()
        return out

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` as JSON, replacing the file whole (a kill never leaves half of it)."""
        write_json_atomic(Path(path), self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | Path) -> FlowResult:
        """Read a result written by ``save``."""
        data = json.loads(Path(path).read_text())
        tensors = {
            k: None if data[k] is None else torch.tensor(data[k])
            for k in _SAVED if k in data
        }
        return cls(region_labels=data["region_labels"], meta=data.get("meta", {}), **tensors)


class FlowProbe:
    """Accumulates flow measures from the attention patterns of one prefill pass.

    Single-sequence (batch 1): run one document at a time. Passes:

    * A full pass (no KV cache: ``query_block(pattern).past == 0``) is captured layer by layer,
      in layer order, and under chunked attention block by block within each layer.
      Once every layer is captured, the next full pass starts a new capture, so ``result()``
      always describes the latest pass (a new prompt needs no ``reset()``).
    * A pattern that would mix with a partial capture (a layer other than the next one, e.g. a
      pass interrupted and run again, hooks registered twice, or a sequence of another length)
      raises ``RuntimeError``; the probe then refuses every pass and ``result()`` until
      ``reset()``.
    * Decode steps of ``generate`` with the KV cache (passes on a cache) are ignored,
      so the probe describes the prompt's prefill; ``generate`` without the KV cache runs full
      passes, and the probe then describes the last of them.
    * With ``w_o``, each layer's values (``hook_v``) are used only by the same layer's pattern of
      the same pass (``hook_v`` runs just before it); a pattern without them raises.

    Args:
        n_layers, n_heads: model shape (``for_model`` reads them).
        regions: number of context regions ``R`` besides the sink (document regions when
            ``document`` is given); default ``DEFAULT_REGIONS`` (8).
        document: ``[start, end)`` token span of the document in the prompt (``Prompt.document``
            from ``at_probe.models.prompts``); the template head and the instruction then get regions of
            their own and only document tokens are split into ``R`` regions. ``None``: tokens
            ``1 .. T-1`` are split evenly.
        rollout: also compute attention rollout from the last token. Explicit opt-in: it keeps
            head-averaged ``[L, T, T]`` maps (``4 L T^2`` bytes) until ``result()``; refused
            under chunked attention (``ChunkedAttentionError``), which never forms them.
        keep_maps: return those head-averaged maps in the result.
        w_o: per layer, the output weights ``[head, d_head, d_model]`` (``for_model(...,
            value_weighted=True)`` reads them): the probe then also hooks each layer's values
            (``hook_v``, ``[batch, pos, kv_head, d_head]``) and records the value-weighted flow
            into the last token. Query head ``h`` reads key-value head ``h // (heads / kv_heads)``.
    """

    def __init__(self, n_layers: int, n_heads: int, *, regions: int = DEFAULT_REGIONS,
                 document: tuple[int, int] | None = None, rollout: bool = False, keep_maps: bool = False,
                 w_o: list[Tensor] | None = None):
        if regions < 1:
            raise ValueError(f"regions must be >= 1, got {regions}")
        if w_o is not None and (len(w_o) != n_layers or any(w.shape[0] != n_heads for w in w_o)):
            raise ValueError(f"w_o must hold {n_layers} tensors of shape [{n_heads}, d_head, d_model]")
        self.n_layers, self.n_heads, self.regions = n_layers, n_heads, regions
        self.document = None if document is None else (int(document[0]), int(document[1]))
        self.rollout, self.keep_maps, self.w_o = rollout, keep_maps, w_o
        self._grams = None if w_o is None else [ops.output_gram(w) for w in w_o]
        self.reset()

    @classmethod
    def for_model(cls, model: Any, *, value_weighted: bool = False, **kwargs: Any) -> FlowProbe:
        """A probe sized for ``model`` (a ``TransformerBridge``); kwargs as in ``__init__``.

        ``value_weighted=True`` also records the value-weighted flow (reads each layer's ``W_O``).
        """
        w_o = None
        if value_weighted:
            w_o = [model.blocks[l].attn.W_O.detach() for l in range(int(model.cfg.n_layers))]
        probe = cls(int(model.cfg.n_layers), int(model.cfg.n_heads), w_o=w_o, **kwargs)
        probe._refuse_maps(model)
        return probe

    def reset(self) -> None:
        """Forget everything captured so far, and a refused pass."""
        self._values: dict[int, Tensor] = {}
        self._refused: str | None = None
        self._new_capture()

    def _new_capture(self) -> None:
        self._bounds: Tensor | None = None
        self._labels: list[str] = []
        self._length = 0
        self._layers: dict[int, dict[str, Tensor]] = {}
        self._maps: dict[int, Tensor] = {}
        self._open: tuple[int, int] | None = None  # (layer, next query row) of a layer read block by block
        self._sums: dict[str, Tensor] = {}
        self._norms: Tensor | None = None
        self._block_sums = BlockSums()
        self._row_regions: Tensor | None = None
        self._edges: list[int] = []

    def hooks(self) -> list[tuple[str, Any]]:
        """``(hook_name, fn)`` pairs for every layer's attention pattern (and values, if weighted)."""
        values = [] if self.w_o is None else [(value_hook(l), self._value_hook) for l in range(self.n_layers)]
        return values + [(pattern_hook(l), self._hook) for l in range(self.n_layers)]

    def _value_hook(self, values: Tensor, *, hook: Any) -> None:
        """Hold the values ``[rows, kv_head, d_head]`` of this pass (of this block of query rows,
        under chunked attention) for the same layer's pattern hook, the next of the probe's
        hooks to run (it consumes them)."""
        self._values[layer_of(hook.name)] = values[0].detach()

    @contextmanager
    def attached(self, model: Any) -> Iterator[FlowProbe]:
        """Context manager: the probe's hooks are on ``model`` inside the block (removed on exit)."""
        self._refuse_maps(model)
        with model.hooks(fwd_hooks=self.hooks()):
            yield self

    def _refuse_maps(self, model: Any) -> None:
        if self.rollout or self.keep_maps:
            refuse_chunked(model, "FlowProbe(rollout=True / keep_maps=True)", _MAPS_NEED)

    def _hook(self, pattern: Tensor, *, hook: Any) -> None:
        layer = layer_of(hook.name)
        values = self._values.pop(layer, None)  # from this pass's (block's) hook_v, or None
        block = query_block(pattern)
        if block.past:
            return  # a KV-cache decode step
        if pattern.shape[0] != 1:
            raise ValueError(f"FlowProbe reads one sequence at a time, got a batch of {pattern.shape[0]}")
        if self._refused is not None:
            raise RuntimeError(self._refused)
        t = block.total_keys
        if block.first:
            self._start_layer(layer, t)
        elif self._open != (layer, block.start):
            self._refuse(f"FlowProbe: rows {block.start}-{block.end - 1} of layer {layer} arrived out of order "
                         "(an interrupted pass or hooks registered twice); call reset()")
        if (self.rollout or self.keep_maps) and not block.last:
            self._refuse(f"FlowProbe(rollout=True / keep_maps=True): {_MAPS_NEED}; run it outside "
                         "at_probe.chunked_attention(model)", ChunkedAttentionError)
        if self.w_o is not None and (values is None or values.shape[0] != block.rows):
            raise RuntimeError(f"FlowProbe: layer {layer}'s pattern came without the values (hook_v) of its "
                               "pass; register probe.hooks() whole")
        with torch.no_grad():
            self._accumulate(layer, pattern[0].detach(), block.start, values)
        self._open = (layer, block.end)
        if block.last:
            self._finish_layer(layer, pattern[0].detach())
            self._open = None

    def _refuse(self, message: str, kind: type[Exception] = RuntimeError) -> None:
        self._refused = message
        raise kind(message)

    def _start_layer(self, layer: int, t: int) -> None:
        """A layer's first rows: start a new capture, or check that this layer continues it."""
        if len(self._layers) == self.n_layers or (not self._layers and self._open is None):
            self._new_capture()  # the previous pass is complete (or never began a layer): this one replaces it
        elif self._open is not None or (self._layers and (layer != max(self._layers) + 1 or t != self._length)):
            done = sorted(self._layers)
            self._refuse(
                f"FlowProbe: layer {layer}'s pattern ({t} tokens) would mix with a partial capture of "
                f"layers {done[0] if done else layer}-{done[-1] if done else layer} ({self._length or t} tokens): "
                "an interrupted pass, hooks registered twice, or a pass over some layers only; call reset()")
        self._length = t
        if self._bounds is None:
            if self.document is None:
                self._bounds = ops.region_bounds(t, self.regions)
                self._labels = ops.region_labels(self._bounds)
            else:
                self._bounds, self._labels = ops.prompt_regions(t, self.regions, self.document)
        self._edges = [int(b) for b in self._bounds.tolist()]  # the key regions of the block sums
        regions = len(self._bounds) - 1
        self._sums = {"region_mass": torch.zeros(self.n_heads, regions, regions),
                      **{k: torch.zeros(self.n_heads) for k in _PER_HEAD}}
        self._norms = None if self.w_o is None else torch.zeros(self.n_heads, t)

    def _accumulate(self, layer: int, heads: Tensor, start: int, values: Tensor | None) -> None:
        """Add one block of query rows ``[head, rows, keys]`` (rows ``start ..``) to the layer's
        sums, from each row's region mass, position-weighted mass and ``sum p log p``
        (``at_probe.flow.block_sums``: one compiled pass on the CPU). Row 0 can only attend to
        itself: it is left out of the per-row means."""
        if values is not None and self._grams is not None and self._norms is not None:
            norms = ops.value_norms(values, gram=self._grams[layer])  # [head, rows]
            self._norms[:, start : start + norms.shape[1]] = norms.float().cpu()
        mass, weighted, plogp = self._block_sums(heads, self._edges, start)
        assign = self._assignment(mass.device)[start : start + heads.shape[1]].to(mass.dtype)
        rows = slice(1 if start == 0 else 0, None)  # the block's rows that enter the per-row means
        q = torch.arange(start, start + heads.shape[1], device=mass.device, dtype=mass.dtype)[rows]
        key_mass = mass[:, rows]
        # each row's total: ~1 (the transition's rounding residue kept) or NaN from a NaN weight
        total = key_mass.sum(-1).clamp(min=1e-30)
        sums = self._sums
        sums["region_mass"] += torch.einsum("qf,hqr->hfr", assign, mass).cpu()
        sums["sink_mass"] += key_mass[..., 0].sum(-1).cpu()
        sums["distance"] += (q - weighted[:, rows] / total).sum(-1).cpu()
        sums["entropy"] += (total.log() - plogp[:, rows] / total).sum(-1).cpu()

    def _assignment(self, device: torch.device) -> Tensor:
        """The capture's ``[T, region]`` query-row assignment (made once per capture, not per block)."""
        if self._row_regions is None or self._row_regions.device != device:
            assert self._bounds is not None
            self._row_regions = ops._assignment(self._bounds.to(device), self._length)
        return self._row_regions

    def _finish_layer(self, layer: int, last_block: Tensor) -> None:
        """The layer's last rows have come: its measures from the sums; the final token's
        profiles from the block's last row."""
        assert self._bounds is not None
        t = self._length
        counts = ops._assignment(self._bounds, t).sum(0).clamp(min=1)
        rows = max(t - 1, 1)
        final = last_block[:, -1, :].float()  # [head, T]
        measures = {"region_mass": self._sums["region_mass"] / counts[None, :, None],
                    "final": ops.key_region_mass(final, self._bounds).cpu(),
                    **{k: self._sums[k] / rows for k in _PER_HEAD}}
        if self._norms is not None:
            measures["final_value"] = ops.key_region_mass(final * self._norms.to(final.device), self._bounds).cpu()
        self._layers[layer] = measures
        if self.rollout or self.keep_maps:
            self._maps[layer] = last_block.mean(dim=0, dtype=torch.float32)  # a whole pass: one pass, no float copy

    def _rollout(self) -> Tensor:
        maps = [self._maps[l] for l in range(self.n_layers)]
        return ops.key_region_mass(ops.rollout_rows(maps), self._bounds).cpu()

    def result(self, **meta: Any) -> FlowResult:
        """The captured measures as a ``FlowResult`` (``meta`` is stored alongside).

        Raises:
            RuntimeError: nothing was captured, some layers are missing, or a pass was refused
                (it would have mixed with a partial capture) and ``reset()`` has not been called.
        """
        if self._refused is not None:
            raise RuntimeError(self._refused)
        missing = [l for l in range(self.n_layers) if l not in self._layers]
        if self._bounds is None or missing:
            raise RuntimeError(f"no complete pass captured (missing layers {missing}): run a forward pass first")
        stack = lambda key: torch.stack([self._layers[l][key] for l in range(self.n_layers)])  # noqa: E731
        return FlowResult(
            region_bounds=self._bounds.cpu(),
            region_labels=list(self._labels),
            region_mass=stack("region_mass"),
            final_token_profile=stack("final"),
            sink_mass=stack("sink_mass"),
            entropy=stack("entropy"),
            distance=stack("distance"),
            rollout=self._rollout() if self.rollout else None,
            final_token_value_profile=stack("final_value") if self.w_o is not None else None,
            maps=torch.stack([self._maps[l].cpu() for l in range(self.n_layers)]) if self.keep_maps else None,
            meta=dict(meta),
        )


def probe_pass(model: Any, prompt: Any, transition: Any, regions: int,
               rollout: bool = False) -> tuple[FlowResult, Any]:
    """One prefill pass of ``prompt`` (an ``at_probe.models.prompts.Prompt``) with the transition (or
    None) and a ``FlowProbe`` (raw and value-weighted) after it; returns the probe's result and
    the transition's ``last_report()`` (None without a transition)."""
    probe = FlowProbe.for_model(model, regions=regions, document=prompt.document, rollout=rollout,
                                value_weighted=True)
    pairs = ([] if transition is None else transition.hooks(model, prompts=[prompt])) + probe.hooks()
    with torch.inference_mode():
        model.run_with_hooks(prompt.tensor(model.cfg.device), fwd_hooks=pairs)
    report = None if transition is None else transition.last_report()
    return probe.result(), report
