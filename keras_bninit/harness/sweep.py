"""Multi-seed sweeps with a results store, resumable (Sections 4.3-4.4).

A sweep is a list of (configuration, seed) runs of `run_experiment`. Each
completed run is written to the sweep directory's `ResultStore` in one
transaction; re-running the same sweep skips what the store holds, resumes
the interrupted run from its last epoch (BackupAndRestore) and runs the
rest, so however often it is killed and restarted, every (configuration,
seed) ends up in the store exactly once. Runs go seed by seed (all
configurations of seed 1, then seed 2, ...), so a partial sweep already
gives paired comparisons.
"""

import collections
import dataclasses
import heapq
import itertools
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback

from keras_bninit.harness import _io
from keras_bninit.harness.datasets import (
    SYNTHETIC_SIZE,
    TEST_FRACTION,
    DatasetUnavailableError,
)
from keras_bninit.harness.experiment import (
    RELATED,
    RunConfig,
    apply_ablation,
    run_experiment,
)
from keras_bninit.harness.stats import BASELINE_OVERRIDES
from keras_bninit.harness.store import (
    HEARTBEAT_EVERY_S,
    STALE_AFTER_S,
    ResultStore,
    new_owner_id,
    record_backends,
)

# Fields a grid may vary; every other RunConfig field is fixed per sweep.
GRID_FIELDS = (
    "dataset",
    "model",
    "lr",
    "gamma",
    "gamma_lr_divisor",
    "bn",
    "input_norm",
)

_C_GRID = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
_C_SUBSET = (0.05, 0.1, 0.5)
_OTHER_DATASETS = (
    {"dataset": "cifar100", "model": "resnet34"},
    {"dataset": "caltech_birds2011", "model": "resnet50"},
    {"dataset": "cars196", "model": "resnet50"},
)
_ALL_DATASETS = ({"dataset": "cifar10", "model": "resnet18"},) + _OTHER_DATASETS


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named sweep: grids (lists of field -> values), seeds, report rows."""

    description: str
    grids: tuple
    seeds: str = "1-15"
    row_key: str = "gamma"
    fixed: tuple = ()  # (field, value) pairs applied to every run


def _cells(cells, **grid):
    return tuple({**cell, **grid} for cell in cells)


PRESETS = {
    "table1a": Preset(
        "Table 1(a): CIFAR-10, ResNet-18, c grid x 3 learning rates, a=100",
        _cells(
            _ALL_DATASETS[:1],
            gamma=_C_GRID,
            lr=(0.1, 0.01, 0.001),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table1b": Preset(
        "Table 1(b): CIFAR-100 (ResNet-34), CUB-200 and Stanford Cars "
        "(ResNet-50), c in {0.05, 0.1, 0.5}, a=100",
        _cells(
            _OTHER_DATASETS,
            gamma=_C_SUBSET,
            lr=(0.1, 0.01),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table2a": Preset(
        "Table 2(a): CIFAR-10, deeper ResNets and other architectures",
        _cells(
            [
                {"dataset": "cifar10", "model": m}
                for m in (
                    "resnet50",
                    "resnet101",
                    "resnet152",
                    "repvgg_a0",
                    "mobilenet_v2",
                    "resnext50_32x4d",
                )
            ],
            gamma=_C_SUBSET,
            lr=(0.1, 0.01),
            gamma_lr_divisor=100.0,
        ),
    ),
    "table2b": Preset(
        "Table 2(b): RBN, RBN-, IEBN, IEBN- (c=1, a=1) vs ours vs BASE on "
        "the four data sets",
        _cells(
            _ALL_DATASETS,
            bn=RELATED,
            gamma=1.0,
            gamma_lr_divisor=1.0,
            lr=(0.1, 0.01),
        )
        + _cells(
            _ALL_DATASETS,
            gamma=_C_SUBSET,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01),
        ),
        row_key="bn",
    ),
    "ablation-a1a2": Preset(
        "Alternative formulations A1, A2 vs the standard form (CIFAR-10)",
        _cells(
            _ALL_DATASETS[:1],
            bn=("standard", "a1", "a2"),
            gamma=_C_GRID,
            lr=(0.1, 0.01, 0.001),
            gamma_lr_divisor=100.0,
        ),
        row_key="bn",
    ),
    "ablation-init-lr": Preset(
        "Ablations: init only (c<1, a=1) and LR only (c=1, a=100), CIFAR-10",
        _cells(
            _ALL_DATASETS[:1],
            gamma=_C_GRID[:-1],
            gamma_lr_divisor=1.0,
            lr=(0.1, 0.01, 0.001),
        )
        + _cells(
            _ALL_DATASETS[:1],
            gamma=1.0,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01, 0.001),
        ),
    ),
    "input-norm": Preset(
        "Input normalization: BN vs fixed vs offline (CIFAR-10, c=0.1, a=100)",
        _cells(
            _ALL_DATASETS[:1],
            input_norm=("bn", "fixed", "offline"),
            gamma=0.1,
            gamma_lr_divisor=100.0,
            lr=(0.1, 0.01, 0.001),
        ),
        row_key="input_norm",
    ),
    "demo": Preset(
        "Offline demo: digits, resnet8, BASE vs c=0.1/a=100, 8 seeds, "
        "6 epochs of batch 32",
        _cells(
            ({"dataset": "digits", "model": "resnet8"},),
            gamma=0.1,
            gamma_lr_divisor=100.0,
            lr=0.1,
        ),
        seeds="1-8",
        # Batch 32 gives 41 steps per epoch. BN running variances start at
        # 1 while, with c = 0.1, the activations' variances are ~c^2, so
        # the running statistics (momentum 0.9) need ~50 steps to forget
        # their start; at batch 128 (11 steps per epoch) the first epochs
        # would measure that rather than the method.
        fixed=(("epochs", 6), ("batch_size", 32)),
    ),
}


# Bounds that keep a typo from hanging or overflowing: seeds fit a signed
# 32-bit integer, and one sweep holds at most `MAX_RUNS` runs.
SEED_LIMIT = 2**31
MAX_RUNS = 100_000


def parse_seeds(text):
    """Seeds from `"1-15"`, `"1,2,5"` or `"1-3,7"`, sorted and unique.

    Every seed is in `[0, SEED_LIMIT)` and there are at most `MAX_RUNS`
    of them; the size is checked before anything is expanded.
    """
    if isinstance(text, (list, tuple)):
        text = ",".join(str(s) for s in text)
    ranges, total = [], 0
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match[2] and int(match[2]) < int(match[1])):
            raise ValueError(
                "Seeds must be non-negative integers as a list or ranges, "
                f"e.g. '1-15' or '1,2,5' or '1-3,7'. Received: {text!r}"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high >= SEED_LIMIT:
            raise ValueError(
                f"Seeds must be < 2**31 ({SEED_LIMIT}). Received: {high} "
                f"in {text!r}"
            )
        total += high - low + 1
        if total > MAX_RUNS:
            raise ValueError(
                f"Too many seeds: {text!r} gives more than {MAX_RUNS}; "
                "give a smaller range"
            )
        ranges.append(range(low, high + 1))
    return sorted(set(itertools.chain.from_iterable(ranges)))


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def expand(grids, seeds, add_base=True, ablation=None, **fixed):
    """Expands grids into the sweep's runs, seed-major, without duplicates.

    Args:
        grids: dicts mapping fields of `GRID_FIELDS` to a value or a list
            of values; each dict is a Cartesian product.
        seeds: a list of seeds or a string for `parse_seeds`.
        add_base: add BASE (c = 1, a = 1, standard BN) for every
            (data set, model, learning rate, input normalization) cell.
        ablation: None, "init-only" or "lr-only": applied to every run
            (`keras_bninit.harness.experiment.apply_ablation`; BASE stays BASE).
        **fixed: other `RunConfig` fields for every run (epochs, out, ...).

    Returns:
        A list of validated `RunConfig`s with the data set's defaults
        resolved.
    """
    seeds = parse_seeds(seeds)
    points = []
    for grid in grids:
        unknown = sorted(set(grid) - set(GRID_FIELDS))
        if unknown:
            raise ValueError(
                f"Grid fields {unknown} cannot vary; valid: {list(GRID_FIELDS)}"
            )
        names = list(grid)
        for values in itertools.product(*(_as_tuple(grid[n]) for n in names)):
            points.append(dict(zip(names, values)))
    if add_base:
        points += [{**p, **BASELINE_OVERRIDES} for p in points]
    if len(points) * len(seeds) > MAX_RUNS:
        raise ValueError(
            f"The sweep has {len(points)} configurations x {len(seeds)} seeds "
            f"= {len(points) * len(seeds)} runs, more than {MAX_RUNS}; "
            "give fewer values or seeds"
        )
    configs, seen = [], set()
    for seed in seeds:
        for point in points:
            config = RunConfig.from_dict({**fixed, **point, "seed": seed})
            if ablation is not None:
                config = apply_ablation(config, ablation)
            config = config.resolved()
            key = (config.key(), seed)
            if key not in seen:
                seen.add(key)
                configs.append(config)
    return configs


def preset_runs(name, seeds=None, **fixed):
    """The runs of a named preset (see `PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(
            f"Unknown preset {name!r}. Valid: {', '.join(PRESETS)}"
        )
    preset = PRESETS[name]
    fixed = {**dict(preset.fixed), **fixed}
    return expand(preset.grids, seeds or preset.seeds, **fixed)


# The named data sets' training splits as stored (tensorflow-datasets'
# "train"; scikit-learn's 1,797 digits, 20 % of which are held out as the
# test set first). An epoch trains on what the 10 % validation split leaves.
_TRAIN_SPLIT_SIZES = {
    "cifar10": 50_000,
    "cifar100": 50_000,
    "caltech_birds2011": 5_994,
    "cars196": 8_144,
    "digits": 1_797 - math.ceil(TEST_FRACTION * 1_797),
    "synthetic": SYNTHETIC_SIZE,
}


def train_images(dataset):
    """Images one epoch of `dataset` trains on; None for a directory.

    scikit-learn's split holds out `ceil(0.1 * n)` of n examples for
    validation, so this is exact (`DatasetSplits.num_train`).
    """
    n = _TRAIN_SPLIT_SIZES.get(dataset)
    return None if n is None else n - math.ceil(0.1 * n)


def estimate(configs, images_per_second=None, workers=1):
    """The work of a sweep, and its duration at a measured throughput.

    Args:
        configs: the sweep's `RunConfig`s.
        images_per_second: one GPU's training throughput (e.g. from
            benchmarks/throughput.py), or None.
        workers: runs training at once, each at `images_per_second`; runs
            start in order whenever a worker is free, as the executors
            claim them.

    Returns:
        A dict: runs, epochs, images (training images over all epochs;
        None when a data set's size is unknown), hours (one after another
        on one GPU) and hours_workers (on `workers` GPUs), None without a
        throughput. Only training steps count: validation, testing and
        start-up add to them.
    """
    configs = [c.resolved() for c in configs]
    per_run = [(c.epochs, train_images(c.dataset)) for c in configs]
    plan = {
        "runs": len(configs),
        "epochs": sum(e for e, _ in per_run),
        "images": None,
        "hours": None,
        "hours_workers": None,
    }
    if any(n is None for _, n in per_run):
        return plan
    plan["images"] = sum(e * n for e, n in per_run)
    if images_per_second:
        free = [0.0] * max(1, int(workers))  # when each worker is free
        for epochs, n in per_run:
            seconds = epochs * n / images_per_second
            heapq.heapreplace(free, free[0] + seconds)
        plan["hours"] = plan["images"] / images_per_second / 3600
        plan["hours_workers"] = max(free) / 3600
    return plan


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


def execute_run(config, build_model=None):
    """Trains one run in this process and returns its store record.

    The run resumes from its run directory's checkpoint, if any
    (`keras.backend.clear_session()` first). Failures of the run itself
    (non-finite loss, a model that cannot be built, a bad value found at
    build time) come back as a record with status "failed".

    Args:
        config: a `RunConfig` whose `out` is the runs directory.
        build_model: passed to `run_experiment`.

    Returns:
        The result record (status "ok" or "failed").

    Raises:
        EnvironmentFailure: an error of the environment (see
            `ENVIRONMENT_ERRORS`), naming the run; KeyboardInterrupt and
            other `BaseException`s pass through unchanged.
    """
    import keras

    keras.backend.clear_session()  # each run starts from a clean graph
    try:
        return run_experiment(config, build_model=build_model)
    except ENVIRONMENT_ERRORS as error:
        raise EnvironmentFailure(
            f"run {config.run_name()} stopped by the environment, not "
            f"stored: {type(error).__name__}: {error}"
        ) from error
    except Exception as error:  # noqa: BLE001 - stored as the run's failure
        traceback.print_exc(file=sys.stderr)
        return {
            "config": dataclasses.asdict(config),
            "status": "failed",
            "reason": f"{type(error).__name__}: {error}",
            "test_accuracy": None,
        }


class LocalExecutor:
    """Runs claimed runs one after another in this process."""

    def __init__(self, build_model=None):
        self.build_model = build_model

    def run(self, claim_next, on_record):
        while (config := claim_next()) is not None:
            start = time.perf_counter()
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


def _read_result(path):
    """A run's result.json, or None when it is missing or unreadable."""
    try:
        record = _io.read_json(path)
    except (ValueError, UnicodeDecodeError):
        print(
            f"[sweep] {path} is unreadable (truncated?); the run is done again",
            file=sys.stderr,
        )
        return None
    return record if isinstance(record, dict) else None


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
        path = os.path.join(runs_dir, config.run_name(), "result.json")
        if not os.path.exists(path):
            continue
        record = _read_result(path)
        if record is None or record.get("status") not in ("ok", "failed"):
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
):
    """Runs every configuration not yet in the sweep's store, exactly once.

    Several processes may run the same sweep on one directory: each run is
    claimed in the store before it is trained (`ResultStore.claim`), so
    every (configuration, seed) is trained once in total. A process waits
    for runs that another live process holds, and takes over the claims of
    dead ones. At start the store is reconciled with the run directories
    (`reconcile`).

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

    Returns:
        A dict of counts: total, skipped (done before, or by another
        process), ran, failed.

    Raises:
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
    stale_after = STALE_AFTER_S if stale_after is None else stale_after
    heartbeat_every = (
        HEARTBEAT_EVERY_S if heartbeat_every is None else heartbeat_every
    )
    owner = new_owner_id()
    retry_before = time.time() if retry_failed else None
    counts = {"total": len(configs), "skipped": 0, "ran": 0, "failed": 0}
    with ResultStore(sweep_dir) as store:
        check_backend(store, sweep_dir)
        meta_path = os.path.join(sweep_dir, "sweep.json")
        try:
            meta = _io.read_json(meta_path, {})
        except ValueError:  # a torn sweep.json: rebuilt below
            print(f"[sweep] {meta_path} is unreadable; rewriting it")
            meta = {}
        meta["row_key"] = row_key
        _io.atomic_write_json(meta_path, meta)
        reconcile(store, configs, runs_dir)
        stored_ok = store.runs("ok")
        stored_failed = store.runs("failed")
        pending = collections.deque()
        for config in configs:
            key = (config.key(), config.seed)
            if key in stored_ok or (key in stored_failed and not retry_failed):
                counts["skipped"] += 1
            else:
                pending.append(config)
        start = time.perf_counter()
        started = 0

        def claim_next():
            nonlocal started
            for _ in range(len(pending)):
                config = pending.popleft()
                key = (config.key(), config.seed)
                state = store.claim(
                    *key,
                    owner,
                    retry_before=retry_before,
                    stale_after=stale_after,
                )
                if state == "done":
                    counts["skipped"] += 1
                    continue
                if state == "busy":
                    pending.append(config)  # another process trains it
                    continue
                if store.last_takeover and not quiet:
                    print(
                        f"[sweep] taking over {config.run_name()} from "
                        f"{store.last_takeover} (dead)",
                        flush=True,
                    )
                _prepare(config, key in stored_failed)
                if not quiet:
                    # Executors may train several runs at once (Ray):
                    # `running` were started and have not come back yet.
                    done = counts["skipped"] + started
                    running = started - counts["ran"]
                    elapsed = time.perf_counter() - start
                    left = len(pending) + 1 + running
                    eta = (
                        _clock(elapsed / counts["ran"] * left)
                        if counts["ran"]
                        else "?"
                    )
                    print(
                        f"[sweep] run {done + 1}/{len(configs)} "
                        f"({counts['skipped']} done before or elsewhere"
                        f"{f', {running} running' if running else ''}) "
                        f"elapsed {_clock(elapsed)} remaining {eta}: "
                        f"{config.run_name()}",
                        flush=True,
                    )
                started += 1
                return config
            return None

        places = collections.defaultdict(list)  # node (and GPU) -> seconds

        def on_record(config, record, where):
            store.finish(record, owner)
            counts["ran"] += 1
            counts["failed"] += record["status"] == "failed"
            place = _place(where)
            places[place].append(where["seconds"])
            if not quiet:
                print(
                    f"[sweep] finished {config.run_name()} "
                    f"({record['status']}) on {place} in "
                    f"{_clock(where['seconds'])}",
                    flush=True,
                )

        heartbeat = _Heartbeat(store.path, owner, heartbeat_every)
        heartbeat.start()
        try:
            while True:
                executor.run(claim_next, on_record)
                if not pending:
                    break
                time.sleep(poll_every)  # runs other live processes hold
        finally:
            heartbeat.stop.set()
            heartbeat.join()
            store.release_all(owner)
    if not quiet:
        for place, seconds in sorted(places.items()):
            print(
                f"[sweep] ran on {place}: {len(seconds)} run"
                f"{'s' if len(seconds) != 1 else ''}, "
                f"{_clock(sum(seconds) / len(seconds))} each on average "
                f"({_clock(min(seconds))} to {_clock(max(seconds))})",
                flush=True,
            )
    return counts


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
    record = _read_result(os.path.join(run_dir, "result.json"))
    if record is not None and record.get("status") == "ok":
        return
    shutil.rmtree(run_dir, ignore_errors=True)
