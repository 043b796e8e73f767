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
import threading
import time

import h5py
import keras
import numpy as np
import pytest

import keras_bninit
from keras_bninit.harness import checkpoints
from keras_bninit.harness.checkpoints import RunState
from keras_bninit.harness.experiment import RunConfig, run_experiment
from keras_bninit.harness.presets import expand
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import (
    EnvironmentFailure,
    execute_run,
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
    # Only BASE was built (its program's model and the run's own): the
    # claimed run was left alone.
    assert trained and set(trained) == {1.0}
    assert counts == {"total": 2, "skipped": 1, "ran": 1, "failed": 0}
    assert not os.path.exists(
        os.path.join(tmp_path, "runs", runs[0].run_name())
    )


# ------------------------------------------------- subprocesses, SIGKILL

DRIVER = textwrap.dedent(
    """
    import dataclasses, json, os, random, signal, sys, time

    from keras_bninit.harness import _io, checkpoints, experiment
    from keras_bninit.harness.presets import expand
    from keras_bninit.harness.sweep import run_sweep
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

    # Each run trained (not each model built: a worker also builds the
    # model of each compiled program it keeps, harness.programs).
    train = experiment._train
    def logged_train(config, *args, **kwargs):
        with open(trained_log, "a") as f:
            f.write(json.dumps([config.gamma, os.getpid()]) + "\\n")
        return train(config, *args, **kwargs)
    experiment._train = logged_train
    builder = tiny_builder

    # Concurrent drivers start sweeping together, after both imported
    # TensorFlow: else a fast one may train every run before the other
    # starts, and the test of sharing would depend on the machine's load.
    together = os.environ.get("START_TOGETHER")
    if together:
        open(os.path.join(together, str(os.getpid())), "w").close()
        while len(os.listdir(together)) < 2:
            time.sleep(0.02)

    runs = expand([{"dataset": "digits", "gamma": 0.1}], seeds,
                  epochs=int(epochs))
    runs = [dataclasses.replace(r, model="tiny") for r in runs]
    counts = run_sweep(runs, sweep_dir, quiet=True, build_model=builder,
                       poll_every=0.5)
    print(json.dumps(counts))
    """
)


def _driver(
    tmp_path, sweep_dir, log, kill_at=0, epochs=3, seeds="1-2", together=None
):
    """A sweep in a child process; drivers given the same `together`
    folder start sweeping at the same moment (two of them)."""
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = ENV if together is None else dict(ENV, START_TOGETHER=str(together))
    return subprocess.Popen(
        [sys.executable, str(script), str(sweep_dir), str(log), str(kill_at)]
        + [str(epochs), seeds],
        cwd=ROOT,
        env=env,
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


def _kill_while_training(proc, log, delay):
    """SIGKILLs `proc` `delay` seconds after it starts training its first
    run (its pid's first line in `log`), if it is still running then."""
    mark = f", {proc.pid}]\n"  # a whole line of the DRIVER's log
    while proc.poll() is None:
        if os.path.exists(log):
            with open(log) as f:
                if any(line.endswith(mark) for line in f):
                    time.sleep(delay)
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                    return
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun(tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "trained.jsonl"
    rng = random.Random(11)
    kills = {"outside": 0, "inside a write": 0}
    stored = []
    for trial in range(40):
        if sum(kills.values()) == 10:
            break
        inside = trial % 2 == 1
        if not inside:  # killed from outside, at a random moment of its
            # work: timed from its start of training, not from its start,
            # which the import (seconds, the machine's load) dominates
            proc = _driver(tmp_path, sweep_dir, log, epochs=4, seeds="1-4")
            _kill_while_training(proc, log, rng.uniform(0.0, 0.8))
        else:  # kills itself inside a checkpoint or JSON write
            kill_at = rng.randint(1, 25)
            proc = _driver(
                tmp_path, sweep_dir, log, kill_at, epochs=4, seeds="1-4"
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
    assert sum(n < 8 for n in stored) >= 6  # most kills hit unfinished work
    proc = _driver(tmp_path, sweep_dir, log, epochs=4, seeds="1-4")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.splitlines()[-1])["failed"] == 0
    _check_exactly_once(sweep_dir, epochs=4, seeds=(1, 2, 3, 4))


@pytest.mark.slow
def test_two_concurrent_sweeps_split_the_runs(tmp_path):
    sweep_dir, log = tmp_path / "sweep", tmp_path / "trained.jsonl"
    together = tmp_path / "started"
    together.mkdir()
    procs = [
        _driver(tmp_path, sweep_dir, log, together=together) for _ in range(2)
    ]
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


# ------------------------------------------------ writes in the background


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = tiny_builder(
        "tiny", 3, (6, 6, 2), 0.1, True, 0.58, keras_bninit.batch_norm
    )
    model.compile(
        keras_bninit.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9)
        ),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _fit(model, state, epochs=3, callbacks=()):
    rng = np.random.default_rng(0)
    x = rng.random((32, 6, 6, 2), dtype="float32")
    y = rng.integers(0, 3, 32)
    model.fit(
        x,
        y,
        batch_size=8,
        validation_data=(x, y),
        epochs=epochs,
        initial_epoch=state.restore(model),
        verbose=0,
        callbacks=[*callbacks, state],
    )


def _state(model):
    return [
        keras.ops.convert_to_numpy(v)
        for v in [*model.variables, *model.optimizer.variables]
    ]


def _assert_equal_states(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def _h5_items(path):
    items = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            value = obj[()] if isinstance(obj, h5py.Dataset) else None
            items[name] = value, dict(obj.attrs)

        f.visititems(visit)
    return items


class _Snapshots(keras.callbacks.Callback):
    """The model's state at the end of each epoch (before RunState's)."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_epoch_end(self, epoch, logs=None):
        self.states.append(_state(self.model))


class _SlowWrites:
    """Slows every fsync of checkpoints and logs renames, with the thread."""

    def __init__(self, monkeypatch, delay=0.2):
        self.events = []
        fsync, rename, replace = checkpoints._fsync_file, os.rename, os.replace

        def slow_fsync(path):
            time.sleep(delay)
            fsync(path)

        def logged(function):
            def wrapper(src, dst):
                function(src, dst)
                self.log(os.path.basename(dst))

            return wrapper

        monkeypatch.setattr(checkpoints, "_fsync_file", slow_fsync)
        monkeypatch.setattr(os, "rename", logged(rename))
        monkeypatch.setattr(os, "replace", logged(replace))

    def log(self, event):
        main = threading.current_thread() is threading.main_thread()
        self.events.append((event, "main" if main else "writer"))


class _LogEpochs(keras.callbacks.Callback):
    def __init__(self, writes):
        super().__init__()
        self.writes = writes

    def on_epoch_begin(self, epoch, logs=None):
        self.writes.log(f"begin {epoch}")


def test_background_writes_commit_each_epochs_state(tmp_path):
    model, snapshots = _tiny_model(), _Snapshots()
    state = RunState(str(tmp_path), background_bytes=0)
    _fit(model, state, callbacks=[snapshots])
    assert [e["epoch"] for e in state.entries] == [0, 1, 2]
    assert _epochs_logged(tmp_path) == [0, 1, 2]
    backup = tmp_path / "backup"
    assert sorted(os.listdir(backup)) == ["ckpt-0002", "ckpt-0003"]
    # The file is the one model.save_weights writes of the same state.
    model.save_weights(tmp_path / "reference.weights.h5")
    written = _h5_items(backup / "ckpt-0003" / "weights.weights.h5")
    reference = _h5_items(tmp_path / "reference.weights.h5")
    assert written.keys() == reference.keys()
    for name, (value, attrs) in reference.items():
        assert written[name][1] == attrs, name
        if value is not None:
            np.testing.assert_array_equal(written[name][0], value)
    # Resuming restores it; the best epoch's weights are that epoch's.
    resumed = _tiny_model(seed=1)
    assert RunState(str(tmp_path)).restore(resumed) == 3
    _assert_equal_states(_state(resumed), snapshots.states[-1])
    best_epoch, _ = state.best()
    resumed.load_weights(state.best_weights_path())
    _assert_equal_states(_state(resumed), snapshots.states[best_epoch])


def test_background_write_overlaps_training_and_commits_in_order(
    tmp_path, monkeypatch
):
    writes = _SlowWrites(monkeypatch)
    state = RunState(str(tmp_path), background_bytes=0)
    _fit(_tiny_model(), state, callbacks=[_LogEpochs(writes)])
    start = writes.events.index(("begin 0", "main"))  # after `restore`
    events = [e for e, _ in writes.events[start:]]
    # Each epoch's files are written on the writer thread ...
    for event, thread in writes.events[start:]:
        if not event.startswith("begin"):
            assert thread == "writer", event
    # ... while the next epoch trains ...
    assert events.index("begin 1") < events.index("ckpt-0001")
    assert events.index("begin 2") < events.index("ckpt-0002")
    # ... one write at a time, in the order of the protocol: the best
    # weights, then the checkpoint that refers to them, then the log.
    commits = [e for e in events if not e.startswith(("begin", "state"))]
    expected = []
    for n, entry in enumerate(state.entries, 1):
        best = max(state.entries[:n], key=lambda e: e["val_accuracy"])
        if best is entry:
            expected.append(f"best-e{n - 1:04d}.weights.h5")
        expected += [f"ckpt-{n:04d}", "epochs.json"]
    assert commits == expected
    assert len(state.entries) == 3  # fit waited for the last write


def test_failed_background_write_is_raised_and_leaves_nothing(
    tmp_path, monkeypatch
):
    fsync = checkpoints._fsync_file

    def full_disk(path):  # from the second epoch's weights on
        first = os.path.isdir(tmp_path / "backup" / "ckpt-0001")
        if first and path.endswith(".h5"):
            raise OSError(28, "No space left on device")
        fsync(path)

    monkeypatch.setattr(checkpoints, "_fsync_file", full_disk)
    state = RunState(str(tmp_path), background_bytes=0)
    with pytest.raises(OSError, match="No space left"):
        _fit(_tiny_model(), state, epochs=4)
    assert sorted(os.listdir(tmp_path / "backup")) == ["ckpt-0001"]
    assert not glob.glob(str(tmp_path / "**" / ".tmp-*"), recursive=True)
    assert [e["epoch"] for e in state.entries] == [0]
    assert _epochs_logged(tmp_path) == [0]


def test_a_crash_leaves_the_write_in_flight_to_complete(tmp_path, monkeypatch):
    writes = _SlowWrites(monkeypatch, delay=0.3)
    state = RunState(str(tmp_path), background_bytes=0)
    with pytest.raises(Crash):
        _fit(_tiny_model(), state, callbacks=[CrashAt(2)])
    assert ("ckpt-0002", "writer") not in writes.events  # still in flight
    # A new RunState on the directory waits for it, then resumes from it.
    assert RunState(str(tmp_path)).restore(_tiny_model()) == 2
    assert ("ckpt-0002", "writer") in writes.events
    assert not glob.glob(str(tmp_path / "**" / ".tmp-*"), recursive=True)


class _SavedDoubled(keras.layers.Layer):
    """Saves its weight doubled: the file holds no variable as it is."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), name="scale")

    def call(self, x):
        return x * self.scale

    def save_own_variables(self, store):
        store["0"] = 2 * keras.ops.convert_to_numpy(self.scale)

    def load_own_variables(self, store):
        self.scale.assign(store["0"][...] / 2)


def test_layout_that_cannot_be_learned_falls_back_to_save_weights(tmp_path):
    def model_with_doubled(seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((6, 6, 2))
        x = _SavedDoubled()(keras.layers.Flatten()(inputs))
        model = keras.Model(inputs, keras.layers.Dense(3)(x))
        model.compile(
            keras_bninit.ParamGroupOptimizer(keras.optimizers.SGD(0.1)),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        model.optimizer.build(model.trainable_variables)
        return model

    model = model_with_doubled(0)
    values = checkpoints._snapshot(model)
    assert checkpoints._learn_layout(model, values, str(tmp_path)) is None
    _assert_equal_states(_state(model), values)  # given back
    os.makedirs(tmp_path / "run")
    state = RunState(str(tmp_path / "run"), background_bytes=0)
    _fit(model, state, epochs=2)
    resumed = model_with_doubled(1)
    assert RunState(str(tmp_path / "run")).restore(resumed) == 2
    _assert_equal_states(_state(resumed), _state(model))


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's (tf.errors.ResourceExhaustedError)."""


class OutOfMemoryError(RuntimeError):
    """Named as PyTorch's (torch.OutOfMemoryError)."""


class DecodeError(Exception):
    """Named as protobuf's, whose arena failures TensorFlow raises."""


def _arena_failure():
    try:
        raise DecodeError("Error parsing message: Arena alloc failed")
    except DecodeError as error:
        raise ValueError("could not restore the checkpoint") from error


def _raises(error):
    def raise_it():
        raise error

    return raise_it


@pytest.mark.parametrize(
    "raise_it",
    [
        _raises(ResourceExhaustedError("OOM when allocating tensor")),
        _raises(
            RuntimeError(
                "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while "
                "trying to allocate 2.00GiB"
            )
        ),
        _raises(OutOfMemoryError("CUDA out of memory. Tried to allocate")),
        _raises(RuntimeError("std::bad_alloc")),
        _arena_failure,
    ],
    ids=["tf", "jax", "torch", "bad_alloc", "protobuf-arena"],
)
def test_out_of_memory_stops_the_sweep_unstored(tmp_path, raise_it):
    def exhausted(name, **kwargs):
        raise_it()

    with pytest.raises(EnvironmentFailure) as info:
        run_sweep(_runs(), tmp_path, quiet=True, build_model=exhausted)
    message = str(info.value)
    assert "out of memory: lower --batch-size, or train fewer runs at once" in (
        message
    )
    with ResultStore(tmp_path) as store:
        assert len(store) == 0 and store.claims() == {}
    counts = run_sweep(_runs(), tmp_path, quiet=True, build_model=tiny_builder)
    assert counts == {"total": 2, "skipped": 0, "ran": 2, "failed": 0}


def test_real_tensorflow_resource_exhausted_is_out_of_memory():
    import tensorflow as tf

    from keras_bninit.harness.sweep import out_of_memory

    assert out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM"))
    assert not out_of_memory(ValueError("width must be positive"))


@pytest.mark.parametrize(
    "tamper",
    ["another seed's", "status only", "accuracy not a number"],
)
def test_a_hostile_result_json_is_set_aside_and_the_run_done_again(
    tmp_path, tamper
):
    runs = _runs("1-2")
    counts = run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    assert counts["ran"] == 4
    by_seed = {}
    with ResultStore(tmp_path) as store:
        for record in store.records():
            by_seed[record["config"]["seed"], record["config"]["gamma"]] = (
                record
            )
    target = by_seed[2, 0.1]["run_dir"]
    path = os.path.join(target, "result.json")
    if tamper == "another seed's":
        with open(os.path.join(by_seed[1, 0.1]["run_dir"], "result.json")) as f:
            content = f.read()
    elif tamper == "status only":
        content = '{"status": "ok"}'
    else:
        record = json.load(open(path))
        record["test_accuracy"] = "abc"
        content = json.dumps(record)
    with open(path, "w") as f:
        f.write(content)
    os.remove(os.path.join(tmp_path, "results.sqlite"))  # the store is lost
    with pytest.warns(
        RuntimeWarning, match="set aside as result.json.invalid-"
    ):
        counts = run_sweep(runs, tmp_path, quiet=True, build_model=tiny_builder)
    # The three intact runs come back from their files; the tampered one
    # is trained again, and its file is kept aside.
    assert counts == {"total": 4, "skipped": 3, "ran": 1, "failed": 0}
    aside = [n for n in os.listdir(target) if n.startswith("result.json.inv")]
    assert len(aside) == 1
    with open(os.path.join(target, aside[0])) as f:
        assert f.read() == content
    with ResultStore(tmp_path) as store:
        records = store.records()
    runs_stored = sorted(
        (r["config"]["seed"], r["config"]["gamma"]) for r in records
    )
    assert runs_stored == [(1, 0.1), (1, 1.0), (2, 0.1), (2, 1.0)]
    assert all(isinstance(r["test_accuracy"], float) for r in records)


@pytest.mark.parametrize("planted", ["backup", "model.keras", "report"])
def test_links_in_a_sweep_are_refused_and_nothing_outside_changes(
    tmp_path, planted
):
    from keras_bninit.harness import report

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    runs = _runs()
    sweep_dir = tmp_path / "sweep"
    run = dataclasses.replace(runs[0], out=str(sweep_dir / "runs"))
    run_dir = sweep_dir / "runs" / run.run_name()
    run_dir.mkdir(parents=True)
    if planted == "backup":
        os.symlink(outside, run_dir / "backup")
        where = run_dir / "backup"
    elif planted == "model.keras":
        os.symlink(outside / "precious.txt", run_dir / "model.keras")
        where = run_dir / "model.keras"
    else:
        os.symlink(outside, sweep_dir / "report")
        where = sweep_dir / "report"
    with pytest.raises(ValueError, match=f"{where} is a symbolic link"):
        run_sweep(runs, sweep_dir, quiet=True, build_model=tiny_builder)
    if planted == "report":
        with pytest.raises(ValueError, match="is a symbolic link"):
            report.write_report([], str(where))
    else:
        with pytest.raises(ValueError, match="is a symbolic link"):
            run_experiment(run, build_model=tiny_builder)
    assert sorted(os.listdir(outside)) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep me"
    assert not (sweep_dir / "results.sqlite").exists()  # nothing written


def test_a_full_disk_stops_before_weights_are_written(tmp_path, monkeypatch):
    """HDF5 crashes the interpreter when a write runs out of space, so a
    checkpoint is not started without room: one environment stop, nothing
    stored, no claim left, and the rerun finishes."""
    import collections
    import shutil

    real = shutil.disk_usage
    usage = collections.namedtuple("usage", "total used free")

    def nearly_full(path):
        if str(tmp_path) in os.fspath(path):
            return usage(10_000_000, 9_900_000, 100_000)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", nearly_full)
    with pytest.raises(EnvironmentFailure, match="No space left on device"):
        run_sweep(_runs(), tmp_path, quiet=True, build_model=tiny_builder)
    with ResultStore(tmp_path) as store:
        assert len(store) == 0 and store.claims() == {}
    monkeypatch.setattr(shutil, "disk_usage", real)
    counts = run_sweep(_runs(), tmp_path, quiet=True, build_model=tiny_builder)
    assert counts == {"total": 2, "skipped": 0, "ran": 2, "failed": 0}
