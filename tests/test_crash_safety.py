"""Crash safety: torn files, SIGKILL at random moments, cooperating sweeps.

The promise (issue 11): kill a sweep at any moment, rerun it, and every
(configuration, seed) ends up trained and stored exactly once; several
sweep processes on one directory split the runs between them.
"""

import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import pytest

from keras_bninit.harness.experiment import RunConfig, run_experiment
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import (
    EnvironmentFailure,
    execute_run,
    expand,
    run_sweep,
)
from tests._tiny import Crash, CrashAt, tiny_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL="3",
    PYTHONUNBUFFERED="1",
    PYTHONPATH=ROOT,
    KERAS_BACKEND="tensorflow",
)


def _config(tmp_path, **kwargs):
    values = {
        "dataset": "digits",
        "model": "tiny",
        "epochs": 4,
        "out": str(tmp_path),
        "verbose": 0,
        "seed": 3,
    }
    return RunConfig(**{**values, **kwargs})


class _Started(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def _interrupted(tmp_path, at=3):
    """A run killed as epoch `at` begins; returns (config, run_dir)."""
    config = _config(tmp_path)
    with pytest.raises(Crash):
        run_experiment(
            config, build_model=tiny_builder, callbacks=[CrashAt(at)]
        )
    run_dir = os.path.join(str(tmp_path), config.resolved().run_name())
    return config, run_dir


def _resume(config):
    started = _Started()
    record = run_experiment(
        config, build_model=tiny_builder, callbacks=[started]
    )
    return record, started.epochs


def _epochs_logged(run_dir):
    with open(os.path.join(run_dir, "epochs.json")) as f:
        return [e["epoch"] for e in json.load(f)]


def test_checkpoints_are_committed_directories(tmp_path):
    _, run_dir = _interrupted(tmp_path)
    backup = os.path.join(run_dir, "backup")
    # The newest and one fallback; nothing half-written is left.
    assert sorted(os.listdir(backup)) == ["ckpt-0002", "ckpt-0003"]
    for name in os.listdir(backup):
        assert sorted(os.listdir(os.path.join(backup, name))) == [
            "state.json",
            "weights.weights.h5",
        ]
    with open(os.path.join(backup, "ckpt-0003", "state.json")) as f:
        assert [e["epoch"] for e in json.load(f)] == [0, 1, 2]
    assert _epochs_logged(run_dir) == [0, 1, 2]
    assert not glob.glob(os.path.join(run_dir, ".tmp-*"))
    # Best weights of both kept checkpoints: the newest's and the fallback's.
    with open(os.path.join(run_dir, "epochs.json")) as f:
        log = json.load(f)

    def best(entries):
        top = max(e["val_accuracy"] for e in entries)
        return min(e["epoch"] for e in entries if e["val_accuracy"] == top)

    kept = {f"best-e{best(log[:n]):04d}.weights.h5" for n in (2, 3)}
    assert (
        set(os.listdir(run_dir))
        & {n for n in os.listdir(run_dir) if n.startswith("best-e")}
        == kept
    )


def test_torn_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    config, run_dir = _interrupted(tmp_path)
    newest = os.path.join(run_dir, "backup", "ckpt-0003")
    weights = os.path.join(newest, "weights.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.warns(RuntimeWarning, match=f"Checkpoint {newest} is unread"):
        record, started = _resume(config)
    assert started == [2, 3]  # epoch 2 again, from the fallback
    assert record["status"] == "ok"
    assert _epochs_logged(run_dir) == [0, 1, 2, 3]
    assert len(record["history"]["val_accuracy"]) == 4
    assert sorted(os.listdir(run_dir)) == [
        "config.json",
        "epochs.json",
        "model.keras",
        "result.json",
    ]


def test_no_readable_checkpoint_restarts_from_epoch_0(tmp_path):
    config, run_dir = _interrupted(tmp_path)
    backup = os.path.join(run_dir, "backup")
    open(os.path.join(backup, "ckpt-0003", "state.json"), "w").close()
    weights = os.path.join(backup, "ckpt-0002", "weights.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match="restarts from epoch 0"):
        record, started = _resume(config)
    assert started == [0, 1, 2, 3]
    assert record["status"] == "ok"
    assert _epochs_logged(run_dir) == [0, 1, 2, 3]
    # The restart is the run from scratch: the same numbers as a fresh one.
    fresh = run_experiment(
        dataclasses.replace(config, out=str(tmp_path / "fresh")),
        build_model=tiny_builder,
    )
    assert record["history"]["loss"] == pytest.approx(
        fresh["history"]["loss"], rel=1e-4
    )


def test_keras_backup_leftovers_do_not_fail_the_run(tmp_path):
    # What Keras's BackupAndRestore left when killed: a 0-byte metadata
    # file and a torn weights file, written in place.
    config = _config(tmp_path, epochs=2)
    run_dir = os.path.join(str(tmp_path), config.resolved().run_name())
    os.makedirs(os.path.join(run_dir, "backup"))
    open(os.path.join(run_dir, "backup", "training_metadata.json"), "w").close()
    with open(os.path.join(run_dir, "backup", "latest.weights.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    record, started = _resume(config)
    assert record["status"] == "ok" and started == [0, 1]


def test_truncated_epochs_json_is_rebuilt(tmp_path):
    config, run_dir = _interrupted(tmp_path)
    log = os.path.join(run_dir, "epochs.json")
    open(log, "w").close()
    with pytest.warns(RuntimeWarning, match=f"{log} is unreadable"):
        record, started = _resume(config)
    assert started == [3]
    assert record["status"] == "ok"
    assert _epochs_logged(run_dir) == [0, 1, 2, 3]


def test_truncated_result_json_is_done_again(tmp_path):
    config = _config(tmp_path, epochs=1)
    first = run_experiment(config, build_model=tiny_builder)
    path = os.path.join(first["run_dir"], "result.json")
    with open(path, "r+") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.warns(RuntimeWarning, match=f"{path} is unreadable"):
        again, started = _resume(config)
    assert started == [0] and again["status"] == "ok"
    assert again["test_accuracy"] == pytest.approx(first["test_accuracy"])
    with open(path) as f:
        assert json.load(f)["status"] == "ok"


# ----------------------------------------------------- environment errors


def _runs(count_seeds="1"):
    runs = expand([{"dataset": "digits", "gamma": 0.1}], count_seeds, epochs=1)
    return [dataclasses.replace(r, model="tiny") for r in runs]


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        PermissionError(13, "Permission denied"),
        MemoryError("out of host memory"),
    ],
)
def test_environment_errors_stop_the_sweep_unstored(tmp_path, error):
    def broken(name, **kwargs):
        raise error

    with pytest.raises(EnvironmentFailure, match=type(error).__name__) as info:
        run_sweep(_runs(), tmp_path, quiet=True, build_model=broken)
    assert "stopped by the environment, not stored" in str(info.value)
    assert "digits-tiny-standard" in str(info.value)  # the run is named
    with ResultStore(tmp_path) as store:
        assert len(store) == 0 and store.claims() == {}
    # The next sweep trains both runs.
    counts = run_sweep(_runs(), tmp_path, quiet=True, build_model=tiny_builder)
    assert counts == {"total": 2, "skipped": 0, "ran": 2, "failed": 0}


def test_run_failures_are_records_environment_errors_raise(tmp_path):
    config = dataclasses.replace(_runs()[0], out=str(tmp_path))

    def bad_value(name, **kwargs):
        raise ValueError("width must be positive")

    record = execute_run(config, build_model=bad_value)
    assert record["status"] == "failed"
    assert record["reason"] == "ValueError: width must be positive"

    def interrupted(name, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute_run(config, build_model=interrupted)


def test_interrupt_releases_every_claim(tmp_path):
    def interrupted(name, **kwargs):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(_runs(), tmp_path, quiet=True, build_model=interrupted)
    with ResultStore(tmp_path) as store:
        assert store.claims() == {} and len(store) == 0


def test_retry_failed_keeps_an_ok_result_and_reconciles(tmp_path):
    runs = _runs()
    run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    with ResultStore(tmp_path) as store:
        ok = store.records()
        (record,) = [r for r in ok if r["config"]["gamma"] == 0.1]
        key = runs[0].key()
        # The row a losing concurrent writer left under the old store.
        store.delete(key, 1)
        store.put({**record, "status": "failed", "reason": "FileNotFoundError"})
        assert store.status(key, 1) == "failed"
    result = os.path.join(record["run_dir"], "result.json")
    before = os.path.getmtime(result)

    def never(name, **kwargs):
        pytest.fail("a run with an ok result.json was trained again")

    counts = run_sweep(
        runs, tmp_path, quiet=True, retry_failed=True, build_model=never
    )
    assert counts == {"total": 2, "skipped": 2, "ran": 0, "failed": 0}
    assert os.path.getmtime(result) == before
    with ResultStore(tmp_path) as store:
        assert store.status(key, 1) == "ok"
        # A missing row is rebuilt from result.json as well.
        store.delete(key, 1)
    counts = run_sweep(runs, tmp_path, quiet=True, build_model=never)
    assert counts["skipped"] == 2
    with ResultStore(tmp_path) as store:
        assert store.get(key, 1)["test_accuracy"] == record["test_accuracy"]


def test_a_live_owners_run_is_not_touched(tmp_path):
    runs = _runs()
    with ResultStore(tmp_path) as store:
        other = f"{os.uname().nodename}:{os.getppid()}:other"
        assert store.claim(runs[0].key(), 1, other) == "claimed"
    trained = []

    def builder(name, **kwargs):
        trained.append(kwargs["bn_gamma"])
        return tiny_builder(name, **kwargs)

    # The other owner "finishes" its run while this sweep waits for it.
    def finish_later():
        time.sleep(1.0)
        with ResultStore(tmp_path) as store:
            config = dataclasses.asdict(runs[0].resolved())
            store.finish(
                {"config": config, "status": "ok", "test_accuracy": 0.5},
                other,
            )

    import threading

    thread = threading.Thread(target=finish_later)
    thread.start()
    counts = run_sweep(
        runs, tmp_path, quiet=True, build_model=builder, poll_every=0.2
    )
    thread.join()
    assert trained == [1.0]  # only BASE; the claimed run was left alone
    assert counts == {"total": 2, "skipped": 1, "ran": 1, "failed": 0}
    assert not os.path.exists(
        os.path.join(tmp_path, "runs", runs[0].run_name())
    )


# ------------------------------------------------- subprocesses, SIGKILL

DRIVER = textwrap.dedent(
    """
    import dataclasses, json, os, random, signal, sys

    from keras_bninit.harness import _io, checkpoints
    from keras_bninit.harness.sweep import expand, run_sweep
    from tests._tiny import Crash, CrashAt, tiny_builder

    sweep_dir, trained_log, kill_at, epochs, seeds = sys.argv[1:6]
    kill_at, calls = int(kill_at), [0]

    def maybe_die():  # SIGKILL at the `kill_at`-th write step (0: never)
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # SIGKILL inside checkpoint writes: after the weights are written and
    # before the rename, and inside every atomic JSON write.
    fsync = checkpoints._fsync_file
    def dying_fsync(path):
        maybe_die()
        fsync(path)
        maybe_die()
    checkpoints._fsync_file = dying_fsync
    replace = os.replace
    def dying_replace(src, dst):
        maybe_die()
        replace(src, dst)
    _io.os.replace = dying_replace

    def builder(name, **kwargs):
        with open(trained_log, "a") as f:
            f.write(json.dumps([kwargs["bn_gamma"], os.getpid()]) + "\\n")
        return tiny_builder(name, **kwargs)

    runs = expand([{"dataset": "digits", "gamma": 0.1}], seeds,
                  epochs=int(epochs))
    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    counts = run_sweep(runs, sweep_dir, quiet=True, build_model=builder,
                       poll_every=0.5)
    print(json.dumps(counts))
    """
)


def _driver(tmp_path, sweep_dir, log, kill_at=0, epochs=3, seeds="1-2"):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, str(script), str(sweep_dir), str(log), str(kill_at)]
        + [str(epochs), seeds],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_exactly_once(sweep_dir, epochs=3, seeds=(1, 2)):
    with ResultStore(sweep_dir) as store:
        records = store.records(status=None)
        assert store.claims() == {}
    keys = sorted((r["config"]["gamma"], r["config"]["seed"]) for r in records)
    assert keys == sorted((g, s) for g in (0.1, 1.0) for s in seeds)
    assert {r["status"] for r in records} == {"ok"}
    for record in records:
        run_dir = record["run_dir"]
        assert _epochs_logged(run_dir) == list(range(epochs))
        assert len(record["history"]["val_accuracy"]) == epochs
        assert sorted(os.listdir(run_dir)) == [
            "config.json",
            "epochs.json",
            "model.keras",
            "result.json",
        ]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun(tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "trained.jsonl"
    rng = random.Random(11)
    kills = {"outside": 0, "inside a write": 0}
    stored = []
    for trial in range(30):
        if sum(kills.values()) == 10:
            break
        inside = trial % 2 == 1
        if not inside:  # killed from outside, at a random moment
            proc = _driver(tmp_path, sweep_dir, log, epochs=4, seeds="1-3")
            try:
                proc.wait(timeout=rng.uniform(2.0, 8.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        else:  # kills itself inside a checkpoint or JSON write
            kill_at = rng.randint(1, 25)
            proc = _driver(
                tmp_path, sweep_dir, log, kill_at, epochs=4, seeds="1-3"
            )
        out, err = proc.communicate(timeout=600)
        if proc.returncode == -signal.SIGKILL:
            kills["inside a write" if inside else "outside"] += 1
            with ResultStore(sweep_dir) as store:
                stored.append(len(store.records(status=None)))
        else:
            assert proc.returncode == 0, err[-3000:]
    print(f"SIGKILLs: {kills}, runs stored after each: {stored}")
    assert sum(kills.values()) == 10
    assert sum(n < 6 for n in stored) >= 6  # most kills hit unfinished work
    proc = _driver(tmp_path, sweep_dir, log, epochs=4, seeds="1-3")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1])["failed"] == 0
    _check_exactly_once(sweep_dir, epochs=4, seeds=(1, 2, 3))


@pytest.mark.slow
def test_two_concurrent_sweeps_split_the_runs(tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "trained.jsonl"
    procs = [_driver(tmp_path, sweep_dir, log) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    counts = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    # Every run trained once in total, split between the two processes.
    assert sum(c["ran"] for c in counts) == 4
    assert all(c["ran"] >= 1 for c in counts), counts
    assert all(c["total"] == 4 and c["failed"] == 0 for c in counts)
    assert [c["ran"] + c["skipped"] for c in counts] == [4, 4]
    with open(log) as f:
        trained = [json.loads(line) for line in f]
    assert len(trained) == 4
    _check_exactly_once(sweep_dir)


def _diagnostic_rows(run_dir, name):
    with open(os.path.join(run_dir, "diagnostics", name)) as f:
        return [json.loads(line) for line in f]


def test_diagnostics_keep_one_row_per_epoch_after_a_resume(tmp_path):
    from keras_bninit.harness import diagnostics as diag

    config = _config(tmp_path, diagnostics=True)
    with pytest.raises(Crash):
        run_experiment(config, build_model=tiny_builder, callbacks=[CrashAt(3)])
    run_dir = os.path.join(str(tmp_path), config.resolved().run_name())
    # Rows of epoch 3 are written, but its checkpoint is lost: epoch 3 is
    # trained again after the resume, and its rows must not be repeated.
    shutil.rmtree(os.path.join(run_dir, "backup", "ckpt-0003"))
    rows = _diagnostic_rows(run_dir, diag.BN_PARAMS_FILE)
    assert sorted({r["epoch"] for r in rows}) == [0, 1, 2, 3]
    record = run_experiment(config, build_model=tiny_builder)
    assert record["status"] == "ok"
    fresh = run_experiment(
        dataclasses.replace(config, out=str(tmp_path / "fresh")),
        build_model=tiny_builder,
    )
    for name in (diag.BN_PARAMS_FILE, diag.LARGE_VALUES_FILE):
        rows = _diagnostic_rows(run_dir, name)
        keys = [
            (r["epoch"], r["step"], r["layer"], r.get("weight")) for r in rows
        ]
        assert len(keys) == len(set(keys))  # one row per (epoch, step, ...)
        expected = _diagnostic_rows(fresh["run_dir"], name)
        assert keys == [
            (r["epoch"], r["step"], r["layer"], r.get("weight"))
            for r in expected
        ]
    # Drifts count from the initialization, also after the resume.
    resumed = _diagnostic_rows(run_dir, diag.BN_PARAMS_FILE)
    expected = _diagnostic_rows(fresh["run_dir"], diag.BN_PARAMS_FILE)
    assert [r["drift"] for r in resumed] == pytest.approx(
        [r["drift"] for r in expected], rel=1e-3, abs=1e-7
    )


def test_backup_left_after_the_result_is_cleared(tmp_path):
    # Killed between writing result.json and deleting the checkpoints.
    config = _config(tmp_path, epochs=1)
    record = run_experiment(config, build_model=tiny_builder)
    run_dir = record["run_dir"]
    os.makedirs(os.path.join(run_dir, "backup", "ckpt-0001"))
    open(os.path.join(run_dir, "best-e0000.weights.h5"), "w").close()

    def never(name, **kwargs):
        pytest.fail("a finished run was trained again")

    assert run_experiment(config, build_model=never) == record
    assert sorted(os.listdir(run_dir)) == [
        "config.json",
        "epochs.json",
        "model.keras",
        "result.json",
    ]
