"""analyses/xsum_eval.py and xsum_report.py on the tiny model with a few held-out documents."""

from __future__ import annotations

import json

import pytest

from tests.analyses.conftest import load_script
from tests.conftest import XSUM_DIR, require_shared

xsum_eval = load_script("xsum_eval")
xsum_report = load_script("xsum_report")

SETTINGS = "baseline;paper:alpha=1,beta=0.5,k=2;placebo:alpha=1,beta=0.5,k=2"


def _args(out, *extra):
    return ["--model", "tiny", "--data", str(require_shared(XSUM_DIR)), "--bucket", "800", "--limit", "4",
            "--max-new-tokens", "12", "--settings", SETTINGS, "--out", str(out), *extra]


def _records(out) -> list[dict]:
    return [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("xsum") / "run"
    assert xsum_eval.main(_args(out, "--batch-size", "4")) == 0
    return out


def test_records_complete_and_scored(full_run):
    recs = _records(full_run)
    assert len(recs) == 12 and len({(r["doc_id"], r["setting"]) for r in recs}) == 12
    assert all(int(r["doc_id"]) % 4 == 0 for r in recs)
    for r in recs:
        for key in ("output", "rouge1", "rouge2", "rougeL", "repetition_4gram", "novel_bigrams",
                    "summary_nll", "source_position_mean", "wall_seconds"):
            assert key in r
        assert 0 <= r["rougeL"] <= 1 and r["summary_nll"] > 0
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["settings"][0] == "baseline" and len(manifest["data_sha256"]) == 64
    assert manifest["prompt_style"] == "plain"


def test_batch_equals_batch_size_one(full_run, tmp_path):
    out = tmp_path / "b1"
    assert xsum_eval.main(_args(out, "--batch-size", "1")) == 0
    key = lambda r: (r["doc_id"], r["setting"])  # noqa: E731
    batched = {key(r): r for r in _records(full_run)}
    for r in _records(out):
        assert r["output"] == batched[key(r)]["output"]
        assert r["summary_nll"] == pytest.approx(batched[key(r)]["summary_nll"], abs=1e-4)


def test_kill_and_resume(full_run, tmp_path):
    """A run cut mid-line and re-run ends with each (document, setting) exactly once."""
    out = tmp_path / "resume"
    out.mkdir()
    (out / "manifest.json").write_text((full_run / "manifest.json").read_text())
    lines = (full_run / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[:5]) + lines[5][:40])  # killed while writing line 6
    assert xsum_eval.main(_args(out, "--batch-size", "4")) == 0
    recs = _records(out)
    assert len(recs) == 12 and len({(r["doc_id"], r["setting"]) for r in recs}) == 12


def test_different_configuration_is_refused(full_run, capsys):
    args = _args(full_run)
    args[args.index("--max-new-tokens") + 1] = "20"
    assert xsum_eval.main(args) == 2
    assert "different configuration" in capsys.readouterr().err


def test_bad_settings_exit_2(tmp_path, capsys):
    args = _args(tmp_path / "bad")
    args[args.index("--settings") + 1] = "paper:alpha=oops"
    assert xsum_eval.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xsum_eval.py: error:") and "\n" not in err


def test_report_paired_differences_and_placebo(full_run, tmp_path):
    assert xsum_report.main([str(full_run), "--figures", str(tmp_path / "fig")]) == 0
    rep = json.loads((full_run / "report.json").read_text())
    assert rep["n_documents"] == 4
    assert set(rep["vs_baseline"]) == {"paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=0"}
    assert list(rep["vs_placebo"]) == ["paper:alpha=1.0,beta=0.5,k=2 vs placebo:alpha=1.0,beta=0.5,k=2,seed=0"]
    est = rep["vs_baseline"]["paper:alpha=1.0,beta=0.5,k=2"]["summary_nll"]
    assert est["n"] == 4 and est["ci95"][0] <= est["mean"] <= est["ci95"][1]
    assert "rougeL" in rep["heldout_selected"]
    assert (tmp_path / "fig" / "xsum_paired.png").is_file()


def test_judge_against_a_local_fake_endpoint(full_run, monkeypatch, capsys):
    """The judge step talks to any OpenAI-compatible endpoint; the key never reaches disk or stdout."""
    import http.server
    import threading

    xsum_judge = load_script("xsum_judge")
    seen: list[dict] = []

    class Fake(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers["Authorization"], "prompt": body["messages"][0]["content"]})
            reply = "'decode_or': 40: , Reason: ok\n'decode_set1': 55: , Reason: x\n'decode_set2': 50"
            data = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AT_PROBE_TEST_KEY", "sk-secret-123")
        code = xsum_judge.main([str(full_run), "--endpoint", f"http://127.0.0.1:{server.server_port}/v1",
                                "--model", "fake", "--api-key-env", "AT_PROBE_TEST_KEY",
                                "--data", str(XSUM_DIR), "--limit", "2"])
    finally:
        server.shutdown()
    assert code == 0 and len(seen) == 2
    assert seen[0]["auth"] == "Bearer sk-secret-123"
    assert seen[0]["prompt"].startswith("Given a document and some summaries")
    lines = (full_run / "judgements.jsonl").read_text()
    assert "sk-secret" not in lines and "sk-secret" not in capsys.readouterr().out
    first = json.loads(lines.splitlines()[0])
    assert first["scores"] == {"baseline": 40.0, "paper:alpha=1.0,beta=0.5,k=2": 55.0,
                               "placebo:alpha=1.0,beta=0.5,k=2,seed=0": 50.0}


def test_judge_needs_the_key(full_run, monkeypatch, capsys):
    xsum_judge = load_script("xsum_judge")
    monkeypatch.delenv("AT_PROBE_MISSING_KEY", raising=False)
    assert xsum_judge.main([str(full_run), "--endpoint", "http://127.0.0.1:9", "--model", "m",
                            "--api-key-env", "AT_PROBE_MISSING_KEY"]) == 2
    assert "AT_PROBE_MISSING_KEY" in capsys.readouterr().err
