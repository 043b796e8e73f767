"""Multi-seed sweeps with a results store, resumable (Sections 4.3-4.4).

A sweep is a list of (configuration, seed) runs of `run_experiment`. Each
completed run is written to the sweep directory's `ResultStore` in one
transaction; re-running the same sweep skips what the store holds, resumes
the interrupted run from its last checkpointed epoch (`RunState`) and runs the
rest, so however often it is killed and restarted, every (configuration,
seed) ends up in the store exactly once. Runs go seed by seed (all
configurations of seed 1, then seed 2, ...), so a partial sweep already
gives paired comparisons. A sequential sweep (`sequential_sweep`, beyond
the paper) trains the seeds in stages and stops each configuration at the
first look that decides it.
"""

import collections
import dataclasses
import os
import shutil
import socket
import sqlite3
import sys
import threading
import time
import traceback
import warnings

from keras_bninit.harness import _io
from keras_bninit.harness.bounds import BadInputError
from keras_bninit.harness.datasets import (
    DatasetUnavailableError,
)
from keras_bninit.harness.experiment import (
    read_trusted_result,
    run_experiment,
)
from keras_bninit.harness.sequential_sweep import check_design, stages
from keras_bninit.harness.store import (
    HEARTBEAT_EVERY_S,
    STALE_AFTER_S,
    STORE_FILENAME,
    ResultStore,
    new_owner_id,
    record_backends,
)
from keras_bninit.harness.store_checks import StoreRowWarning


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EnvironmentFailure(RuntimeError):
    """An error of the machine, not of the run: the sweep stops.

    Disk full or read-only (OSError), missing data
    (`DatasetUnavailableError`), MemoryError. The run stays unclaimed and
    unstored, so the next sweep trains it. The message names the run.
    """


# Errors that stop a sweep instead of being stored as the run's failure.
ENVIRONMENT_ERRORS = (OSError, MemoryError, DatasetUnavailableError)

# How TensorFlow, JAX, PyTorch, the C++ runtime and protobuf say that host
# or accelerator memory ran out (type names, then words in the message).
_OOM_TYPES = {"ResourceExhaustedError", "OutOfMemoryError", "MemoryError"}
_OOM_WORDS = (
    "RESOURCE_EXHAUSTED",
    "out of memory",
    "OOM when allocating",
    "std::bad_alloc",
    "Arena alloc failed",
    "Failed to allocate",
)
OUT_OF_MEMORY_HINT = (
    "out of memory: lower --batch-size, or train fewer runs at once "
    "(--workers, --gpus-per-run 1)"
)


def out_of_memory(error):
    """Whether `error`, or an error it was raised from, says that host or
    accelerator memory ran out (`ResourceExhaustedError`,
    `XlaRuntimeError: RESOURCE_EXHAUSTED`, `torch.OutOfMemoryError`,
    `std::bad_alloc`, protobuf's "Arena alloc failed", `MemoryError`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ in _OOM_TYPES or isinstance(error, MemoryError):
            return True
        text = str(error)
        if any(word.lower() in text.lower() for word in _OOM_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def execute_run(config, build_model=None):
    """Trains one run in this process and returns its store record.

    The run resumes from its run directory's checkpoint, if any. It trains
    in this process's compiled program for its configuration, shared with
    the runs before it (`harness.programs.worker_programs`). Failures of the
    run itself (non-finite loss, a model that cannot be built, a bad value
    found at build time) come back as a record with status "failed".

    Args:
        config: a `RunConfig` whose `out` is the runs directory.
        build_model: passed to `run_experiment`.

    Returns:
        The result record (status "ok" or "failed").

    Raises:
        EnvironmentFailure: an error of the environment (see
            `ENVIRONMENT_ERRORS`), naming the run; `BadInputError` (the
            data cannot serve the arguments), KeyboardInterrupt and
            other `BaseException`s pass through unchanged.
    """
    from keras_bninit.harness.programs import worker_programs

    try:
        return run_experiment(
            config, build_model=build_model, programs=worker_programs()
        )
    except BadInputError:  # bad input, not the run's failure: not stored
        raise
    except Exception as error:  # noqa: BLE001 - stored as the run's failure
        if out_of_memory(error):
            raise EnvironmentFailure(
                f"run {config.run_name()} stopped by the environment, not "
                f"stored: {OUT_OF_MEMORY_HINT} ({_first_line(error)})"
            ) from error
        if isinstance(error, ENVIRONMENT_ERRORS):
            raise EnvironmentFailure(
                f"run {config.run_name()} stopped by the environment, not "
                f"stored: {type(error).__name__}: {error}"
            ) from error
        traceback.print_exc(file=sys.stderr)
        return {
            "config": dataclasses.asdict(config),
            "status": "failed",
            "reason": f"{type(error).__name__}: {error}",
            "test_accuracy": None,
        }


def _first_line(error):
    text = " ".join(str(error).split())
    text = text[:200] + ("..." if len(text) > 200 else "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LocalExecutor:
    """Runs claimed runs one after another in this process."""

    def __init__(self, build_model=None):
        self.build_model = build_model

    def run(self, claim_next, on_record):
        """Trains each run `claim_next()` gives, passing its record to
        `on_record`. Where `claim_next.upcoming()` lists the runs that may
        follow (a sweep's pending ones), the next program is built and
        traced while a run trains (`ProgramCache.expect`)."""
        from keras_bninit.harness.programs import worker_programs

        upcoming = getattr(claim_next, "upcoming", None)
        while (config := claim_next()) is not None:
            start = time.perf_counter()
            if upcoming is not None:
                worker_programs().expect(upcoming(), self.build_model)
            record = execute_run(config, build_model=self.build_model)
            where = {
                "node": socket.gethostname(),
                "gpu": None,
                "seconds": time.perf_counter() - start,
            }
            on_record(config, record, where)


class _Heartbeat(threading.Thread):
    """Keeps an owner's claims fresh while the sweep runs (own connection)."""

    def __init__(self, store_path, owner, every):
        super().__init__(name="sweep-heartbeat", daemon=True)
        self.store_path, self.owner, self.every = store_path, owner, every
        self.stop = threading.Event()

    def run(self):
        with ResultStore(self.store_path) as store:
            while not self.stop.wait(self.every):
                try:
                    store.heartbeat(self.owner)
                except Exception as error:  # noqa: BLE001 - retried
                    print(f"[sweep] heartbeat: {error}", file=sys.stderr)


def reconcile(store, configs, runs_dir):
    """Makes the store agree with the run directories' result.json.

    A run whose `result.json` says "ok" while the store has no row or a
    "failed" row gets its row from the file (a process killed between the
    two writes); a "failed" result.json without a row is stored too.

    Returns:
        How many rows were written.
    """
    stored = {k: "ok" for k in store.runs("ok")}
    stored.update({k: "failed" for k in store.runs("failed")})
    written = 0
    for config in configs:
        key = (config.key(), config.seed)
        if stored.get(key) == "ok":
            continue
        run_dir = os.path.join(runs_dir, config.run_name())
        record = read_trusted_result(run_dir, config)
        if record is None:
            continue
        if record["status"] == "ok" or key not in stored:
            store.put(record)
            written += 1
    return written


def check_backend(store, sweep_dir):
    """Raises `ValueError` when the store holds runs of another backend.

    The same seed gives other numbers on another backend, so a sweep's
    paired comparisons hold within one backend: a sweep directory is
    trained on one backend.
    """
    import keras

    backend = keras.backend.backend()
    with warnings.catch_warnings():  # bad rows: set aside, warned, later
        warnings.simplefilter("ignore", StoreRowWarning)
        stored = record_backends(store.records(status=None))
    others = [b for b in stored if b != backend]
    if others:
        raise ValueError(
            f"{sweep_dir!r} holds runs trained on the {', '.join(others)} "
            f"backend; this sweep runs on {backend}, and runs of two "
            f"backends are never paired. Use --backend {others[0]} to add "
            "to it, or another --out."
        )


def run_sweep(
    configs,
    sweep_dir,
    retry_failed=False,
    quiet=False,
    build_model=None,
    row_key="gamma",
    executor=None,
    stale_after=None,
    heartbeat_every=None,
    poll_every=2.0,
    sequential=None,
):
    """Runs every configuration not yet in the sweep's store, exactly once.

    Several processes may run the same sweep on one directory: each run is
    claimed in the store before it is trained (`ResultStore.claim`), so
    every (configuration, seed) is trained once in total. A process waits
    for runs that another live process holds, and takes over the claims of
    dead ones. At start, rows that do not match their own record are set
    aside with a warning (`ResultStore.set_aside_bad_rows`; their runs are
    done again), the store is reconciled with the run directories
    (`reconcile`), and claims on runs stored ok are cleared (a driver lost
    between a run's end and its row leaves one).

    Args:
        configs: `RunConfig`s (e.g. from `expand` or `preset_runs`); their
            `out` is replaced by `<sweep_dir>/runs`.
        sweep_dir: the sweep directory; holds `results.sqlite`, `runs/` and
            `sweep.json`.
        retry_failed: run again the runs stored as failed (NaN, error);
            otherwise they are skipped and stay failures. A run whose
            result.json is ok is never retried.
        quiet: print nothing (no progress line, no Keras bar).
        build_model: passed to `run_experiment`.
        row_key: the report's row field, remembered in `sweep.json`.
        executor: runs the claimed runs; `LocalExecutor(build_model)` by
            default. See `LocalExecutor` for the interface.
        stale_after: seconds after which another owner's claim is taken
            over (`store.STALE_AFTER_S` by default).
        heartbeat_every: seconds between heartbeats of this process's
            claims (`store.HEARTBEAT_EVERY_S` by default).
        poll_every: seconds between looks at runs other processes hold.
        sequential: a `sequential_sweep.Plan`: the seeds in stages, each
            configuration stopped at the first look that decides it (beyond
            the paper; recorded in sweep.json, never mixed with another
            design). None: every seed (the paper's fixed design).

    Returns:
        A dict of counts: total, skipped (done before, or by another
        process), ran, failed; with `sequential`, also planned (the runs
        of every seed) and total the runs its stages needed.

    Raises:
        ValueError: the folder holds runs of another design or backend.
        EnvironmentFailure, KeyboardInterrupt: the sweep stopped; every
            claim of this process is released first.
    """
    os.makedirs(sweep_dir, exist_ok=True)
    runs_dir = os.path.join(sweep_dir, "runs")
    configs = [
        dataclasses.replace(c, out=runs_dir, verbose=0 if quiet else c.verbose)
        for c in configs
    ]
    if executor is None:
        executor = LocalExecutor(build_model)
    elif getattr(executor, "build_model", False) is None:
        executor.build_model = build_model  # e.g. a RayExecutor's tasks
    check_sweep_folder(sweep_dir, configs)
    check_design(sweep_dir, sequential, configs)
    reporter = SweepReporter(len(configs), quiet=quiet)
    with ResultStore(sweep_dir) as store:
        check_backend(store, sweep_dir)
        _write_meta(sweep_dir, row_key, reporter, sequential)
        store.set_aside_bad_rows()  # their runs are done again
        reconcile(store, configs, runs_dir)
        store.clear_claims_of_stored_runs()
        counts = collections.Counter(total=0, skipped=0, ran=0, failed=0)
        places = collections.defaultdict(list)  # node -> seconds
        for runs in stages(store, configs, sequential, reporter.say):
            reporter.total, reporter.start = len(runs), time.perf_counter()
            sweep = _Sweep(store, runs, retry_failed, stale_after, reporter)
            sweep.run(executor, heartbeat_every, poll_every)
            counts.update(sweep.counts)
            for place, seconds in sweep.places.items():
                places[place] += seconds
    reporter.places(places)
    if sequential is not None:
        counts["planned"] = len(configs)
    return dict(counts)


def check_sweep_folder(sweep_dir, configs):
    """Raises `ValueError` naming a symbolic link where a file of the sweep
    belongs (its store, sweep.json, runs/, report/ and every run's
    folder): nothing is written or deleted through a link."""
    what = "a sweep's files"
    for name in (
        STORE_FILENAME,
        f"{STORE_FILENAME}-wal",
        f"{STORE_FILENAME}-shm",
        "sweep.json",
        "report",
    ):
        _io.refuse_links(os.path.join(sweep_dir, name), what)
    runs_dir = os.path.join(sweep_dir, "runs")
    if os.path.islink(runs_dir):  # inside it: the sweep's runs' folders
        _io.refuse_links(runs_dir, what)
    for config in configs:
        run = dataclasses.replace(config, out=runs_dir)
        _io.refuse_links(os.path.join(runs_dir, run.run_name()))


class SweepReporter:
    """Every line a sweep prints, in one place (nothing when `quiet`)."""

    def __init__(self, total, quiet=False):
        self.total = total
        self.quiet = quiet
        self.start = time.perf_counter()

    def _print(self, text):
        if not self.quiet:
            print(f"[sweep] {text}", flush=True)

    def say(self, text):
        """A line of the sweep's own (a sequential sweep's decisions)."""
        self._print(text)

    def unreadable(self, path):
        self._print(f"{path} is unreadable; rewriting it")

    def takeover(self, config, owner):
        self._print(f"taking over {config.run_name()} from {owner} (dead)")

    def starting(self, config, counts, started, pending):
        """A run starts; executors may train several at once (Ray):
        `started - ran` were started and have not come back yet."""
        done = counts["skipped"] + started
        running = started - counts["ran"]
        elapsed = time.perf_counter() - self.start
        left = pending + 1 + running
        eta = _clock(elapsed / counts["ran"] * left) if counts["ran"] else "?"
        self._print(
            f"run {done + 1}/{self.total} "
            f"({counts['skipped']} done before or elsewhere"
            f"{f', {running} running' if running else ''}) "
            f"elapsed {_clock(elapsed)} remaining {eta}: {config.run_name()}"
        )

    def finished(self, config, record, place, seconds):
        accuracy = record.get("test_accuracy")
        outcome = record["status"]
        if outcome == "ok" and isinstance(accuracy, (int, float)):
            outcome = f"ok, test accuracy {accuracy:.4f}"
        self._print(
            f"finished {config.run_name()} ({outcome}) on {place} in "
            f"{_clock(seconds)}"
        )

    def places(self, places):
        for place, seconds in sorted(places.items()):
            self._print(
                f"ran on {place}: {len(seconds)} run"
                f"{'s' if len(seconds) != 1 else ''}, "
                f"{_clock(sum(seconds) / len(seconds))} each on average "
                f"({_clock(min(seconds))} to {_clock(max(seconds))})"
            )


def _write_meta(sweep_dir, row_key, reporter, sequential=None):
    """Remembers the report's row field in `sweep.json`, and a
    sequential sweep's design."""
    meta_path = os.path.join(sweep_dir, "sweep.json")
    try:
        meta = _io.read_json(meta_path, {})
    except ValueError:  # a torn sweep.json: rebuilt
        reporter.unreadable(meta_path)
        meta = {}
    meta["row_key"] = row_key
    if sequential is not None:
        meta["design"] = sequential.to_meta()
    _io.atomic_write_json(meta_path, meta)


class _Sweep:
    """One process's share of a sweep: claims runs from the store, hands
    them to an executor, stores their records, releases its claims."""

    def __init__(self, store, configs, retry_failed, stale_after, reporter):
        self.store = store
        self.reporter = reporter
        self.owner = new_owner_id()
        self.retry_before = time.time() if retry_failed else None
        self.stale_after = STALE_AFTER_S if stale_after is None else stale_after
        self.counts = {"total": len(configs), "skipped": 0, "ran": 0}
        self.counts["failed"] = 0
        self.started = 0
        self.places = collections.defaultdict(list)  # node -> seconds
        self.stored_failed = store.runs("failed")
        stored_ok = store.runs("ok")
        self.pending = collections.deque()
        self.busy = set()  # pending runs last seen held by other processes
        for config in configs:
            key = (config.key(), config.seed)
            if key in stored_ok or (
                key in self.stored_failed and not retry_failed
            ):
                self.counts["skipped"] += 1
            else:
                self.pending.append(config)

    def claim_next(self):
        """The next run this process claimed, or None (all done or held
        by other processes)."""
        for _ in range(len(self.pending)):
            config = self.pending.popleft()
            key = (config.key(), config.seed)
            state = self.store.claim(
                *key,
                self.owner,
                retry_before=self.retry_before,
                stale_after=self.stale_after,
            )
            if state == "done":
                self.counts["skipped"] += 1
                continue
            if state == "busy":
                self.pending.append(config)  # another process trains it
                self.busy.add(key)
                continue
            self.busy.discard(key)
            if self.store.last_takeover:
                self.reporter.takeover(config, self.store.last_takeover)
            _prepare(config, key in self.stored_failed)
            self.reporter.starting(
                config, self.counts, self.started, len(self.pending)
            )
            self.started += 1
            return config
        return None

    def on_record(self, config, record, where):
        """Stores a run's record and releases its claim, in one step."""
        self.store.finish(record, self.owner)
        self.counts["ran"] += 1
        self.counts["failed"] += record["status"] == "failed"
        place = _place(where)
        self.places[place].append(where["seconds"])
        self.reporter.finished(config, record, place, where["seconds"])

    def run(self, executor, heartbeat_every, poll_every):
        """Runs until no run is pending; claims released in every case."""
        every = (
            HEARTBEAT_EVERY_S if heartbeat_every is None else heartbeat_every
        )
        heartbeat = _Heartbeat(self.store.path, self.owner, every)
        heartbeat.start()
        stopped = True
        try:
            while True:
                executor.run(_Claims(self), self.on_record)
                if not self.pending:
                    break
                time.sleep(poll_every)  # runs other live processes hold
            stopped = False
        finally:
            heartbeat.stop.set()
            heartbeat.join()
            try:
                self.store.release_all(self.owner)
            except sqlite3.Error:
                # The store's disk is full or failing too: the error that
                # stopped the sweep is the one to report, and the claims
                # of a process that has ended are taken over at once.
                if not stopped:
                    raise


class _Claims:
    """An executor's `claim_next`: the next run this process claimed, or
    None; `upcoming()` lists the runs still pending, in order, but those
    another process held when last asked."""

    def __init__(self, sweep):
        self._sweep = sweep

    def __call__(self):
        return self._sweep.claim_next()

    def upcoming(self):
        busy = self._sweep.busy
        return [
            config
            for config in self._sweep.pending
            if (config.key(), config.seed) not in busy
        ]


def _place(where):
    """Where an executor ran a run: "node" or "node GPU 0,1"."""
    gpu = where.get("gpu")
    return f"{where['node']} GPU {gpu}" if gpu else str(where["node"])


def _prepare(config, was_failed):
    """Clears a claimed run's directory for a retry of a failed run.

    Only a run stored as failed is cleared, and never one whose
    result.json says ok.
    """
    if not was_failed:
        return
    run_dir = os.path.join(config.out, config.run_name())
    record = read_trusted_result(run_dir, config)
    if record is not None and record.get("status") == "ok":
        return
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):  # set-aside records are kept
        if not name.startswith("result.json.invalid-"):
            path = os.path.join(run_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)
