"""The sweep runner: planning, the driver's record sink, and Ray fan-out with faults (tiny model)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from at_probe.runs.runfiles import owned_run
from at_probe.runs.sweep import KillStart, KillWorker, RecordSink, SweepError, Unit, plan_units, run_units
from at_probe.xsum import SummaryWorkerFactory, bucket_file, is_heldout, load_records, parse_settings
from tests.conftest import XSUM_DIR, require_shared

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ";".join(parse_settings("baseline;paper:alpha=1,beta=0.5,k=2;placebo:alpha=1,beta=0.5,k=2"))
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="ray is not installed: `make test` installs it")


def _docs(n: int = 4) -> list[dict]:
    recs = load_records(bucket_file(require_shared(XSUM_DIR), "800"))
    return [r for r in recs if is_heldout(r["id"])][:n]


def _factory() -> SummaryWorkerFactory:
    return SummaryWorkerFactory("tiny", "cpu", SETTINGS, max_new_tokens=6)


def _comparable(records: list[dict]) -> dict:
    """Records by (doc_id, setting), without the wall time (the one field that may differ)."""
    return {(r["doc_id"], r["setting"]): {k: v for k, v in r.items() if k != "wall_seconds"} for r in records}


def _assert_same_records(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) == len(_comparable(got)), "a record is missing or duplicated"
    got_c, want_c = _comparable(got), _comparable(want)
    assert got_c.keys() == want_c.keys()
    for key, rec in want_c.items():
        assert got_c[key]["output"] == rec["output"], key
        assert got_c[key]["summary_nll"] == pytest.approx(rec["summary_nll"], abs=1e-5), key


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for this module's in-process sweeps: `run_units` joins a running Ray and
    leaves it up, so each test skips a cluster start (seconds on 2 cores). The driver test, placed
    before the first user of this one, starts and stops its own in a subprocess, as the CLI does."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> list[dict]:
    """The reference: every unit in this process, Ray not used."""
    run = tmp_path_factory.mktemp("single")
    with owned_run(run):
        sink = RecordSink(run / "records.jsonl")
        run_units(plan_units(SETTINGS.split(";"), _docs(), 2), _factory(), sink.write)
    return sink.records


def test_plan_is_the_same_whatever_is_done(tmp_path):
    with owned_run(tmp_path):
        _check_plan(tmp_path)


def _check_plan(tmp_path):
    docs = [{"id": str(i)} for i in range(5)]
    units = plan_units(["a", "b"], docs, 2)
    assert [(u.setting, u.doc_ids) for u in units] == [
        ("a", ("0", "1")), ("a", ("2", "3")), ("a", ("4",)), ("b", ("0", "1")), ("b", ("2", "3")), ("b", ("4",))]
    # a unit half-written by a killed driver: one complete line, one cut short
    (tmp_path / "r.jsonl").write_text('{"doc_id": "0", "setting": "a"}\n{"doc_id": "1", "set')
    sink = RecordSink(tmp_path / "r.jsonl")
    assert sink.pending(units) == units  # still pending: document 1 is missing
    assert sink.write(units[0], [{"doc_id": "0", "setting": "a"}, {"doc_id": "1", "setting": "a"}]) == 1
    assert RecordSink(tmp_path / "r.jsonl").pending(units) == units[1:]
    assert (tmp_path / "r.jsonl").read_text().count("\n") == 2
    with pytest.raises(ValueError):
        plan_units(["a"], docs, 0)


def test_single_process_starts_once_before_any_unit():
    calls = []

    class Worker:
        description = {"device": "cpu"}

        def __call__(self, unit):
            calls.append(("unit", unit.setting))
            return [{"doc_id": d, "setting": unit.setting} for d in unit.doc_ids]

    units = [Unit("a", ({"id": "1"},)), Unit("b", ({"id": "1"},))]
    run_units(units, Worker, lambda unit, records: calls.append(("write", len(records))),
              start=lambda described: calls.append(("start", described["device"])))
    assert calls == [("start", "cpu"), ("unit", "a"), ("write", 1), ("unit", "b"), ("write", 1)]


@pytest.mark.slow
@needs_ray
def test_a_killed_driver_resumes_from_its_records(single_process, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "analyses" / "xsum_eval.py"), "--model", "tiny", "--data",
           str(XSUM_DIR), "--bucket", "800", "--limit", "4", "--batch-size", "2", "--max-new-tokens", "6",
           "--device", "cpu", "--settings", SETTINGS, "--out", str(out)]
    driver = subprocess.Popen([*cmd, "--workers", "2"], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = out / "records.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        if records.is_file() and len(records.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert driver.poll() is None, "the driver finished before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    driver.wait()
    written = len(records.read_text().splitlines())
    assert 2 <= written < 12
    subprocess.run([*cmd, "--workers", "2"], cwd=REPO, check=True, capture_output=True)
    _assert_same_records([json.loads(line) for line in records.read_text().splitlines()], single_process)


@pytest.mark.slow
@needs_ray
def test_two_ray_workers_give_the_single_process_records(ray_cluster, single_process, tmp_path):
    with owned_run(tmp_path):
        sink = RecordSink(tmp_path / "records.jsonl")
    described = []
    run_units(plan_units(SETTINGS.split(";"), _docs(), 2), _factory(), sink.write, start=described.append,
              workers=2)
    assert len(described) == 1 and described[0]["device"] == "cpu"
    _assert_same_records(sink.records, single_process)
    on_disk = [json.loads(line) for line in sink.path.read_text().splitlines()]
    _assert_same_records(on_disk, single_process)


class _EchoWorker:
    """A worker without a model: the fault tests check the driver's bookkeeping (every unit
    written once, deaths retried), which a model only slows down; the model's records through
    Ray are checked by the two tests above."""

    description: ClassVar[dict] = {"device": "cpu"}

    def __call__(self, unit: Unit) -> list[dict]:
        return [{"doc_id": d, "setting": unit.setting, "output": f"{unit.setting}/{d}"} for d in unit.doc_ids]


@pytest.fixture(scope="module")
def echo_in_actors():
    """Actors unpickle the echo worker by value: a Ray worker process need not import this module."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _echo_units() -> list[Unit]:
    return plan_units(["a", "b", "c"], [{"id": str(i)} for i in range(4)], 2)


def _assert_echoed_once(records: list[dict], units: list[Unit]) -> None:
    got = sorted((r["doc_id"], r["setting"], r["output"]) for r in records)
    assert got == sorted((d, u.setting, f"{u.setting}/{d}") for u in units for d in u.doc_ids), \
        "a record is missing or duplicated"


@pytest.mark.slow
@needs_ray
def test_a_killed_worker_loses_and_duplicates_nothing(ray_cluster, echo_in_actors, tmp_path):
    units = _echo_units()
    marker = tmp_path / "killed"
    with owned_run(tmp_path):
        sink = RecordSink(tmp_path / "records.jsonl")
    run_units(units, KillWorker(_EchoWorker, units[2].key, marker), sink.write, workers=2)
    assert marker.read_bytes() == b"x", "the fault was injected once"
    _assert_echoed_once(sink.records, units)
    _assert_echoed_once([json.loads(line) for line in sink.path.read_text().splitlines()], units)
    # a unit that kills every worker it reaches fails the sweep after max_attempts
    always = tmp_path / "always"
    with pytest.raises(SweepError, match="3 times"):
        run_units(units[:1], KillWorker(_EchoWorker, units[0].key, always, times=99), lambda u, r: None, workers=2)
    assert always.read_bytes() == b"xxx"


@pytest.mark.slow
@needs_ray
def test_an_actor_that_dies_while_loading_the_model_is_replaced(ray_cluster, echo_in_actors, tmp_path):
    """A worker process killed while it loads the model (out of memory, say) is started again,
    like a unit whose worker died; a start that always dies fails after max_attempts."""
    units = _echo_units()[:2]
    marker, records = tmp_path / "died", []
    run_units(units, KillStart(_EchoWorker, marker), lambda unit, recs: records.extend(recs), workers=1)
    assert marker.read_bytes() == b"x", "the fault was injected once"
    _assert_echoed_once(records, units)
    always = tmp_path / "always"
    with pytest.raises(SweepError, match="while starting 3 times"):
        run_units(units, KillStart(_EchoWorker, always, times=99), lambda unit, recs: None, workers=1)
    assert always.read_bytes() == b"xxx"


def test_a_worker_returning_the_wrong_records_is_an_error(tmp_path):
    with owned_run(tmp_path):
        sink = RecordSink(tmp_path / "r.jsonl")
    unit = Unit("a", ({"id": "1"}, {"id": "2"}))
    with pytest.raises(ValueError, match="expected"):
        sink.write(unit, [{"doc_id": "1", "setting": "a"}])  # one record short
    with pytest.raises(ValueError, match="expected"):
        sink.write(unit, [{"doc_id": "1", "setting": "a"}] * 2 + [{"doc_id": "2", "setting": "a"}])
    assert not sink.path.exists() or sink.path.read_text() == ""


def test_without_flags_ray_is_never_imported():
    code = ("import sys\nfrom at_probe.runs.sweep import Unit, run_units\n"
            "class W:\n    description = {}\n    def __call__(self, unit):\n"
            "        return [{'doc_id': d, 'setting': unit.setting} for d in unit.doc_ids]\n"
            "run_units([Unit('a', ({'id': '1'},))], W, lambda u, r: None)\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.slow
@needs_ray
def test_errors_inside_actors_keep_their_type(ray_cluster, tmp_path):
    units = plan_units(SETTINGS.split(";"), _docs(2), 2)
    with pytest.raises(FileNotFoundError):  # the factory fails in every actor: a bad model directory
        run_units(units, SummaryWorkerFactory(str(tmp_path / "no-model"), "cpu", SETTINGS, 4),
                  lambda u, r: None, workers=2)
    wrong = SummaryWorkerFactory("tiny", "cpu", "baseline", 4)  # the work fails: a setting it lacks
    with pytest.raises(KeyError):
        run_units(units[-1:], wrong, lambda u, r: None, workers=1)


class _RefusingWorker(_EchoWorker):
    """A worker whose unit is the input's fault (a reference that does not fit, say)."""

    def __call__(self, unit: Unit) -> list[dict]:
        from at_probe.runs.errors import UsageError

        raise UsageError(f"document {unit.doc_ids[0]}: does not fit")


@needs_ray
def test_the_inputs_fault_in_an_actor_is_its_own_one_line_error(ray_cluster, echo_in_actors):
    """Not Ray's wrapper, whose message is the remote traceback: the commands print it as is."""
    from at_probe.runs.errors import UsageError

    with pytest.raises(UsageError) as raised:
        run_units(_echo_units()[:1], _RefusingWorker, lambda unit, recs: None, workers=1)
    assert str(raised.value) == "document 0: does not fit"


@needs_ray
def test_more_gpus_than_the_cluster_has_is_the_inputs_fault(ray_cluster, echo_in_actors):
    """A ``UsageError`` (one line, exit 2 in the commands), raised before any actor starts."""
    from at_probe.runs.errors import UsageError

    with pytest.raises(UsageError, match="2 workers x 1.0 GPU need more than the cluster's 0 GPUs"):
        run_units(_echo_units(), _EchoWorker, lambda unit, recs: None, workers=2, gpus_per_worker=1.0)
