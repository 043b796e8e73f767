"""Damaged files are skipped or refused, never fatal (issue 28's cases).

A committed checkpoint whose bits were flipped makes h5py raise its own
`RuntimeError` ("bad local heap signature" and the like): the run warns,
falls back to the checkpoint before it and ends with the numbers of an
uninterrupted run, in `run` and in `sweep` alike.
"""

import os
import warnings

import h5py
import pytest

from keras_bninit.harness.experiment import RunConfig, run_experiment
from keras_bninit.harness.store import ResultStore
from keras_bninit.harness.sweep import run_sweep
from tests._tiny import Crash, CrashAt, tiny_builder


def _config(out, **kwargs):
    values = {
        "dataset": "digits",
        "model": "tiny",
        "epochs": 3,
        "out": str(out),
        "verbose": 0,
        "seed": 2,
        "deterministic": True,
        "input": "memory",
    }
    return RunConfig(**{**values, **kwargs}).resolved()


def _h5py_error(path):
    """The error h5py raises reading every object of `path`, or None."""
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: list(obj.attrs) and None)
    except Exception as error:  # noqa: BLE001 - what the damage gives
        return error
    return None


def flip_until_runtime_error(path):
    """Flips 8 bytes at the first offset (in steps of 97) that makes h5py
    raise `RuntimeError`, as a bit-flipped disk block does; returns it."""
    data = open(path, "rb").read()
    for offset in range(0, len(data) - 8, 97):
        damaged = bytearray(data)
        for k in range(8):
            damaged[offset + k] ^= 0xFF
        with open(path, "wb") as f:
            f.write(damaged)
        if isinstance(_h5py_error(path), RuntimeError):
            return offset
    raise AssertionError("no offset gave h5py's RuntimeError")


def _numbers(record):
    history = dict(record["history"])
    history.pop("epoch_time_s")
    return history, record["test_accuracy"], record["best_epoch"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return _numbers(run_experiment(_config(out), build_model=tiny_builder))


def _crash_and_damage(config):
    with pytest.raises(Crash):
        run_experiment(config, build_model=tiny_builder, callbacks=[CrashAt(2)])
    run_dir = os.path.join(config.out, config.run_name())
    newest = os.path.join(run_dir, "backup", "ckpt-0002", "weights.weights.h5")
    flip_until_runtime_error(newest)
    return newest


def test_a_bit_flipped_checkpoint_is_skipped_in_a_run(tmp_path, uninterrupted):
    config = _config(tmp_path)
    newest = _crash_and_damage(config)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = run_experiment(config, build_model=tiny_builder)
    messages = [str(w.message) for w in caught]
    assert any(
        newest.rsplit("/", 1)[0] in m and "RuntimeError" in m for m in messages
    ), messages
    assert record["status"] == "ok"
    assert _numbers(record) == uninterrupted


def test_a_bit_flipped_checkpoint_is_skipped_in_a_sweep(
    tmp_path, uninterrupted
):
    config = _config(tmp_path / "runs")
    _crash_and_damage(config)
    counts = run_sweep([config], tmp_path / "runs", quiet=True,
                       build_model=tiny_builder)  # fmt: skip
    assert counts["failed"] == 0 and counts["ran"] == 1
    with ResultStore(tmp_path / "runs") as store:
        (record,) = store.records(status=None)
    assert record["status"] == "ok"
    assert _numbers(record) == uninterrupted


def test_a_damaged_best_epoch_file_falls_back_too(tmp_path, uninterrupted):
    config = _config(tmp_path)
    _crash_and_damage(config)
    run_dir = os.path.join(config.out, config.run_name())
    # Both kept checkpoints' best-epoch files damaged: epoch 0 it is.
    for name in os.listdir(run_dir):
        if name.startswith("best-e"):
            flip_until_runtime_error(os.path.join(run_dir, name))
    with pytest.warns(RuntimeWarning, match="restarts from epoch 0"):
        record = run_experiment(config, build_model=tiny_builder)
    assert _numbers(record) == uninterrupted
