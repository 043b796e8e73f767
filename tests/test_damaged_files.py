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
    from tensorflow.python.framework import config as tf_config

    # A module fixture runs before conftest's per-test guard of op
    # determinism, so it gives the setting back itself.
    before = tf_config.is_op_determinism_enabled()
    out = tmp_path_factory.mktemp("whole")
    numbers = _numbers(run_experiment(_config(out), build_model=tiny_builder))
    if not before:
        tf_config.disable_op_determinism()
    return numbers


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


# -- damaged model files: one ValueError line naming the file ---------------


@pytest.fixture(scope="module")
def saved_resnet8(tmp_path_factory):
    import keras

    import keras_bninit as kb
    from keras_bninit.models import create_model

    folder = tmp_path_factory.mktemp("models")
    kb.set_seed(1, deterministic=False)
    model = create_model("resnet8", num_classes=10, input_shape=(8, 8, 1))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    return folder


def _one_line(error, path):
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


def test_a_damaged_keras_file_is_one_line(saved_resnet8, tmp_path):
    import keras_bninit as kb

    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip archive at all" * 40)
    with pytest.raises(ValueError) as info:
        kb.load_model(garbage)
    assert "not a .keras file" in _one_line(info.value, garbage)
    # Bits flipped inside the archive: each damage gives one line.
    data = (saved_resnet8 / "m.keras").read_bytes()
    failures = 0
    for offset in range(100, len(data) - 8, len(data) // 25):
        damaged = bytearray(data)
        for k in range(8):
            damaged[offset + k] ^= 0xFF
        path = tmp_path / f"flipped-{offset}.keras"
        path.write_bytes(damaged)
        try:
            kb.load_model(path)
        except ValueError as error:
            _one_line(error, path)
            failures += 1
    assert failures >= 10  # most flips are caught as damage


def test_a_damaged_weights_file_is_named_as_damaged(saved_resnet8, tmp_path):
    from keras_bninit.models import create_model

    kwargs = {"num_classes": 10, "input_shape": (8, 8, 1)}
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError) as info:
        create_model("resnet8", pretrained=str(garbage), **kwargs)
    text = _one_line(info.value, garbage)
    assert "not an HDF5" in text and "does not fit" not in text
    flipped = tmp_path / "flipped.weights.h5"
    flipped.write_bytes((saved_resnet8 / "m.weights.h5").read_bytes())
    flip_until_runtime_error(str(flipped))
    with pytest.raises(ValueError) as info:
        create_model("resnet8", pretrained=str(flipped), **kwargs)
    assert "damaged or truncated" in _one_line(info.value, flipped)


def test_a_refused_pth_is_one_line_without_weights_only_advice(tmp_path):
    torch = pytest.importorskip("torch")
    from keras_bninit.models import create_model

    class Payload:
        def __reduce__(self):
            return (print, ("ran code from a file",))

    path = tmp_path / "hostile.pth"
    torch.save({"fc.weight": Payload()}, path)
    with pytest.raises(ValueError) as info:
        create_model("resnet18", pretrained=str(path), num_classes=10)
    text = _one_line(info.value, path)
    assert "weights_only=False" not in text and len(text) < 400
    assert "no code from a file is run" in text
