"""Model names: an unknown one fails at once with the choices; a cached hub id works offline.

The hub is never contacted: its endpoint is a local port (closed, or a stub server here) and
its cache a temporary folder (``unreachable_hub``).
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time

import pytest

import at_probe as ap
from at_probe.models.loading import HUB_TIMEOUT_S, UnknownModelError, _resolve, model_shape

CHOICES = ("'smollm2'", "'tiny'", "a local checkpoint directory", "a hub id that is cached or reachable")


def _cache(constants, repo_id: str) -> None:
    """Put the tiny checkpoint's config into the hub cache as ``repo_id`` (the cache's layout)."""
    from pathlib import Path

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(ap.TINY_MODEL_DIR / "config.json", repo / "snapshots" / commit / "config.json")


def _refused(name: str) -> tuple[str, float]:
    start = time.perf_counter()
    with pytest.raises(UnknownModelError) as err:
        model_shape(name)
    return str(err.value), time.perf_counter() - start


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub unreachable"])
def test_an_unknown_name_fails_at_once_listing_the_choices(unreachable_hub, monkeypatch, offline):
    """Was about 25 s of retries, then a message without the choices."""
    monkeypatch.setattr(unreachable_hub, "HF_HUB_OFFLINE", offline)
    message, seconds = _refused("smolm2")
    assert seconds < 5, f"{seconds:.1f} s"  # < 1 s on an idle machine; generous under load
    assert message.startswith("unknown model 'smolm2': not in the hub cache, and the hub")
    assert ("HF_HUB_OFFLINE" if offline else "unreachable") in message
    assert all(c in message for c in CHOICES) and message.endswith("did you mean 'smollm2'?")
    assert "\n" not in message


def test_a_missing_directory_lists_the_choices_too(unreachable_hub, tmp_path):
    message, _ = _refused(str(tmp_path / "no" / "such"))
    assert "no such model directory" in message and all(c in message for c in CHOICES)
    assert isinstance(UnknownModelError(), FileNotFoundError)  # as the missing directory was before


def test_a_cached_hub_id_loads_from_the_cache_while_the_hub_is_unreachable(unreachable_hub):
    """The config comes from the cache alone (from_pretrained would retry the hub for minutes);
    a near miss of a cached id is suggested."""
    _cache(unreachable_hub, "someone/tiny-llama")
    start = time.perf_counter()
    assert model_shape("someone/tiny-llama").n_layers == 8
    assert time.perf_counter() - start < 30
    assert _resolve("someone/tiny-llama") == ("someone/tiny-llama", True)
    message, _ = _refused("someone/tiny-lama")
    assert message.endswith("did you mean 'someone/tiny-llama'?")


class _StubHub(http.server.BaseHTTPRequestHandler):
    """The hub's model API: ``exists/model`` is a model, anything else is not."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        found = self.path.startswith("/api/models/exists/model")
        body = b'{"id": "exists/model"}' if found else b'{"error": "Repository not found"}'
        self.send_response(200 if found else 404)
        if not found:
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub_hub(unreachable_hub, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(unreachable_hub, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield unreachable_hub
    server.shutdown()
    server.server_close()


def test_a_reachable_hub_decides_once_without_retries(stub_hub, monkeypatch):
    """A model the hub has is left to from_pretrained (download allowed); one the hub lacks
    fails at once, after a single request with the short timeout."""
    from huggingface_hub import HfApi

    calls = []
    ask = HfApi.model_info

    def counted(self, repo_id, **kwargs):
        calls.append(kwargs.get("timeout"))
        return ask(self, repo_id, **kwargs)

    monkeypatch.setattr(HfApi, "model_info", counted)
    assert _resolve("exists/model") == ("exists/model", False)
    message, seconds = _refused("smolm2")
    assert calls == [HUB_TIMEOUT_S, HUB_TIMEOUT_S] and seconds < 5
    assert "has no model 'smolm2'" in message and message.endswith("did you mean 'smollm2'?")
