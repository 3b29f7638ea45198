"""Sweeps of (batch of documents, setting) units: in this process, or fanned out on Ray.

The run directory is the contract. The driver alone (one per directory, holding
``at_probe.runs.runfiles.owned_run``) appends records (``records.jsonl``, fsynced after each unit)
and writes the manifest; workers only compute. A unit is done when
all its records are on disk, so a driver killed at any moment resumes from the file: units
are planned the same way every time (setting-major, the full document list cut into
consecutive batches), so a resumed or distributed run computes exactly the batches a
single-process run computes, and records already on disk are never written twice.

With ``workers=0`` and no address everything runs here and Ray is never imported. Otherwise
each Ray actor loads the model once (``factory()``) and takes one unit at a time; a unit
whose actor died is retried on a fresh actor (``max_attempts`` in all), an actor that died
while loading the model is replaced the same way (``max_attempts`` starts per actor slot), and
an error raised by the work itself or by the loading (a bad document, a bad model name) stops
the sweep with that error. ``KillWorker`` and ``KillStart`` inject the deaths, for tests and
for checking a deployment.

Example:
    >>> units = plan_units(["baseline", "paper:alpha=1.0,beta=0.5,k=2"], docs, batch_size=8)
    >>> with owned_run(run):                      # one driver per run directory
    ...     check_manifest(run, config)             # before anything is repaired or written
    ...     sink = RecordSink(run / "records.jsonl")
    ...     run_units(sink.pending(units), SummaryWorkerFactory(...), sink.write,
    ...               start=lambda described: ensure_manifest(run, {**config, **described}), workers=4)
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from at_probe.runs.errors import UsageError
from at_probe.runs.runfiles import append_jsonl, read_jsonl


@dataclass(frozen=True)
class Unit:
    """One piece of work: a batch of documents under one setting.

    ``docs`` are the documents' release records (``id``, ``document``, ``summary``...), so a
    unit is self-contained: a worker on another machine needs no data files.
    """

    setting: str
    docs: tuple[dict[str, Any], ...]

    @property
    def doc_ids(self) -> tuple[str, ...]:
        return tuple(str(d["id"]) for d in self.docs)

    @property
    def key(self) -> str:
        return f"{self.setting}|{','.join(self.doc_ids)}"


class Worker(Protocol):
    """Computes a unit's records in the process that loaded the model."""

    description: dict[str, Any]
    """Facts about the loaded model for the manifest (device, dtype, prompt style, versions)."""

    def __call__(self, unit: Unit) -> list[dict[str, Any]]: ...


WorkerFactory = Callable[[], Worker]
"""Loads the model and returns a ``Worker``; must be picklable (a module-level dataclass)."""


class FunctionWorker:
    """A ``Worker`` made of a loaded model's description and a unit function (a closure over it)."""

    def __init__(self, description: dict[str, Any], run: Callable[[Unit], list[dict[str, Any]]]) -> None:
        self.description, self._run = description, run

    def __call__(self, unit: Unit) -> list[dict[str, Any]]:
        return self._run(unit)


class SweepError(RuntimeError):
    """A unit failed on every attempt because its worker process kept dying."""


def plan_units(settings: Sequence[str], docs: Sequence[dict[str, Any]], batch_size: int) -> list[Unit]:
    """Setting-major units over consecutive batches of ``docs`` (the same plan on every run)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    starts = range(0, len(docs), batch_size)
    return [Unit(s, tuple(docs[i : i + batch_size])) for s in settings for i in starts]


class RecordSink:
    """The driver's side of ``records.jsonl``: what is done, and appending a unit's records.

    Records are keyed by ``(doc_id, setting)`` (``key``); a record whose key is already on disk
    (from a unit half-written when the driver was killed) is dropped, never duplicated. Opening
    it cuts a partial last line, so only the directory's owner opens it
    (``at_probe.runs.runfiles.owned_run``), after checking the manifest.

    Raises:
        RuntimeError: opened outside ``owned_run`` of the file's directory.
        UsageError: a line that is not a JSON object, or a record without its key (``key``):
            not a run's records.
    """

    def __init__(self, path: Path, key: Callable[[dict[str, Any]], tuple[str, str]] | None = None) -> None:
        self.path = path
        self.key = key or (lambda r: (r["doc_id"], r["setting"]))
        self.records = read_jsonl(path, repair=True)
        try:
            self.done = {self.key(r) for r in self.records}
        except KeyError as err:
            raise UsageError(f"{path}: a record without {err}: not a run's records") from None

    def pending(self, units: Sequence[Unit], coming: Collection[tuple[str, str]] = ()) -> list[Unit]:
        """Units with at least one record missing, in plan order; keys in ``coming`` (records
        about to be adopted) count as done."""
        done = self.done | set(coming)
        return [u for u in units if any((d, u.setting) not in done for d in u.doc_ids)]

    def adopt(self, records: list[dict[str, Any]]) -> int:
        """Append (fsynced) records computed elsewhere (``at_probe.runs.reuse``) whose key is not
        on disk yet; returns how many."""
        new = list({self.key(r): r for r in records if self.key(r) not in self.done}.values())
        self._append(new)
        return len(new)

    def write(self, unit: Unit, records: list[dict[str, Any]]) -> int:
        """Append (fsynced) the unit's records that are not on disk yet; returns how many.

        Raises:
            ValueError: the records are not exactly one per document of the unit (a worker bug
                that would otherwise leave the unit silently incomplete or duplicated).
        """
        keys = [self.key(r) for r in records]
        expected = {(d, unit.setting) for d in unit.doc_ids}
        if len(keys) != len(set(keys)) or set(keys) != expected:
            raise ValueError(f"unit {unit.key} returned records for {sorted(keys)}, "
                             f"expected {sorted(expected)}")
        new = [r for r, k in zip(records, keys) if k not in self.done]
        self._append(new)
        return len(new)

    def _append(self, new: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            append_jsonl(fh, new)
        self.done.update(self.key(r) for r in new)
        self.records.extend(new)


def run_units(
    units: Sequence[Unit],
    factory: WorkerFactory,
    write: Callable[[Unit, list[dict[str, Any]]], Any],
    *,
    start: Callable[[dict[str, Any]], None] = lambda description: None,
    workers: int = 0,
    ray_address: str | None = None,
    gpus_per_worker: float = 0.0,
    max_attempts: int = 3,
    progress: Callable[[Unit], None] = lambda unit: None,
) -> None:
    """Compute every unit once and hand its records to ``write`` (in this process).

    Args:
        units: the pending units (``RecordSink.pending``).
        factory: loads the model (in each worker process) and returns the ``Worker``.
        write: the driver's writer, called once per finished unit.
        start: called once with the workers' ``description`` before any unit runs (writes or
            checks the manifest; an exception stops the sweep before any work).
        workers: 0 (with no ``ray_address``): this process, Ray not imported; N: N Ray actors
            (a local Ray with N CPUs unless ``ray_address`` joins a cluster).
        ray_address: a Ray cluster to join (``ray start --head`` prints it), or None.
        gpus_per_worker: GPUs each actor asks Ray for (1 on a GPU cluster).
        max_attempts: attempts per unit when actors die, and starts per actor when an actor
            dies while loading the model.
        progress: called after each unit is written.

    Raises:
        SweepError: a unit's worker died ``max_attempts`` times, or an actor died while loading
            the model ``max_attempts`` times in a row.
        UsageError: the workers ask for more GPUs than the Ray cluster has.
        Exception: what ``factory()`` or a worker raised, with its own type (from a Ray actor
            too; its ``UsageError`` as itself, with its one-line message).
    """
    if workers < 0 or max_attempts < 1:
        raise ValueError("workers must be >= 0 and max_attempts >= 1")
    if workers == 0 and ray_address is None:
        worker = factory()
        start(worker.description)
        for unit in units:
            write(unit, worker(unit))
            progress(unit)
        return
    _run_on_ray(list(units), factory, write, start, max(workers, 1), ray_address, gpus_per_worker,
                max_attempts, progress)


class _ActorBody:
    """What each Ray actor holds: one loaded worker, or the error that loading it raised (sent
    back from ``describe``/``run`` with its own type, e.g. a bad model name)."""

    def __init__(self, factory: WorkerFactory) -> None:
        try:
            self.worker, self.error = factory(), None
        except Exception as err:  # noqa: BLE001 - re-raised in the driver by describe()
            self.worker, self.error = None, err

    def describe(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.worker.description

    def run(self, unit: Unit) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return self.worker(unit)


def _run_on_ray(units: list[Unit], factory: WorkerFactory, write: Callable, start: Callable,
                workers: int, ray_address: str | None, gpus_per_worker: float, max_attempts: int,
                progress: Callable) -> None:
    import ray
    from ray.exceptions import RayError, RayTaskError

    started_here = not ray.is_initialized()
    if started_here:  # "local" starts a fresh Ray even on a node where `ray start` runs a cluster
        ray.init(address=ray_address or "local", num_cpus=None if ray_address else workers,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    actors: list[Any] = []
    try:
        n_actors = min(workers, max(len(units), 1))
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_worker and n_actors * gpus_per_worker > gpus:
            raise UsageError(f"{n_actors} workers x {gpus_per_worker} GPU need more than the cluster's "
                             f"{gpus:g} GPUs (--workers, --gpus-per-worker; --device cuda asks 1 each)")
        actor_class = ray.remote(num_cpus=1, num_gpus=gpus_per_worker)(_ActorBody)
        starting: dict[Any, tuple[Any, int]] = {}  # describe() ref -> (actor, its start attempt)

        def launch(attempt: int) -> None:
            actor = actor_class.remote(factory)
            actors.append(actor)
            starting[actor.describe.remote()] = (actor, attempt)

        def started(ref: Any) -> tuple[Any, dict[str, Any]] | None:
            """A finished start: the actor and its description, or None when the actor died while
            loading (its replacement is launched, ``max_attempts`` starts in all)."""
            actor, attempt = starting.pop(ref)
            try:
                return actor, ray.get(ref)
            except RayTaskError as err:  # the factory failed (bad model name, say): its own error
                raise _cause(err) from None
            except RayError:  # the process died while loading (out of memory, lost node): start another
                ray.kill(actor)
                actors.remove(actor)
                if attempt >= max_attempts:
                    raise SweepError(f"a worker died while starting {attempt} times") from None
                launch(attempt + 1)
                return None

        for _ in range(n_actors):
            launch(1)
        idle, descriptions = [], []
        while starting:  # every actor loaded (or replaced) before the first unit
            (ref,), _ = ray.wait(list(starting), num_returns=1)
            if (ready := started(ref)) is not None:
                idle.append(ready[0])
                descriptions.append(ready[1])
        if any(d != descriptions[0] for d in descriptions):
            raise RuntimeError(f"Ray workers loaded different models: {descriptions}")
        start(descriptions[0])
        queue, attempts = collections.deque(units), collections.Counter()
        in_flight: dict[Any, tuple[Any, Unit]] = {}
        while queue or in_flight:
            while idle and queue:
                actor, unit = idle.pop(), queue.popleft()
                in_flight[actor.run.remote(unit)] = (actor, unit)
            (ref,), _ = ray.wait([*in_flight, *starting], num_returns=1)
            if ref in starting:  # a replacement actor finished loading
                if (ready := started(ref)) is not None:
                    if ready[1] != descriptions[0]:
                        raise RuntimeError(f"a replacement Ray worker loaded another model: {ready[1]}, "
                                           f"not {descriptions[0]}")
                    idle.append(ready[0])
                continue
            actor, unit = in_flight.pop(ref)
            try:
                records = ray.get(ref)
            except RayTaskError as err:  # the work itself failed: stop with its error
                raise _cause(err) from None
            except RayError:  # the worker is gone (killed, out of memory, lost node): retry elsewhere
                attempts[unit.key] += 1
                if attempts[unit.key] >= max_attempts:
                    raise SweepError(f"unit {unit.key} lost its worker {attempts[unit.key]} times") from None
                queue.appendleft(unit)
                ray.kill(actor)
                actors.remove(actor)
                launch(1)
                continue
            write(unit, records)
            progress(unit)
            idle.append(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _cause(err: Any) -> BaseException:
    """The error a Ray task raised, with its own type: the bad input's ``UsageError`` itself (its
    one-line message), anything else with the remote traceback in its message."""
    return err.cause if isinstance(err.cause, UsageError) else err.as_instanceof_cause()


@dataclass(frozen=True)
class KillWorker:
    """Fault injection for checking a deployment: a factory whose worker process exits abruptly
    (``os._exit``, as a crash or an out-of-memory kill would) when it gets the unit with key
    ``unit_key``, the first ``times`` times across all processes (counted in the file ``marker``)."""

    factory: WorkerFactory
    unit_key: str
    marker: Path
    times: int = 1

    def __call__(self) -> Worker:
        return _KillingWorker(self.factory(), self)


@dataclass(frozen=True)
class KillStart:
    """Fault injection for checking a deployment: a factory whose process exits abruptly
    (``os._exit``, as an out-of-memory kill while loading would) after ``factory()`` loaded the
    model and before the worker is ready, on the first ``times`` starts across all processes
    (counted in the file ``marker``)."""

    factory: WorkerFactory
    marker: Path
    times: int = 1

    def __call__(self) -> Worker:
        worker = self.factory()
        if not self.marker.exists() or self.marker.stat().st_size < self.times:
            with open(self.marker, "ab") as fh:
                fh.write(b"x")
            os._exit(1)
        return worker


class _KillingWorker:
    def __init__(self, inner: Worker, fault: KillWorker) -> None:
        self.inner, self.fault = inner, fault
        self.description = inner.description

    def __call__(self, unit: Unit) -> list[dict[str, Any]]:
        marker = self.fault.marker
        kills_left = not marker.exists() or marker.stat().st_size < self.fault.times
        if unit.key == self.fault.unit_key and kills_left:
            with open(marker, "ab") as fh:
                fh.write(b"x")
            os._exit(1)
        return self.inner(unit)
