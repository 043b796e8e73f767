"""The in-memory input path (harness.memory), on every Keras backend.

The pipeline is checked against NumPy crops, flips and normalizations; the
epoch rows are a pure function of (seed, epoch); a run on this path resumes
exactly; the images are never saved with the weights.
"""

import dataclasses

import h5py
import keras
import numpy as np
import pytest

from keras_bninit.harness.datasets import DATASETS, RawData, load_raw
from keras_bninit.harness.experiment import RunConfig, run_experiment
from keras_bninit.harness.memory import (
    ImagePipeline,
    MemorySplits,
    load_memory_dataset,
)
from keras_bninit.harness.splits import EpochTracker
from keras_bninit.seeding import make_complex
from tests._tiny import Crash, CrashAt, tiny_builder


def _reference(images, rows, crop, pixel_max, input_norm, mean, std):
    """NumPy: crop at (top, left), flip, then the input normalization."""
    height, width = crop
    out = []
    for position, flip, top, left in rows:
        image = images[position, top : top + height, left : left + width]
        out.append(image[:, ::-1] if flip else image)
    out = np.stack(out).astype(np.float64)
    if input_norm == "fixed":
        half = (pixel_max + 1) / 2
        return (out - half) / half
    out = out / pixel_max
    if input_norm == "offline":
        out = (out - np.asarray(mean)) / np.asarray(std)
    return out


@pytest.mark.parametrize("input_norm", ["bn", "fixed", "offline", "none"])
def test_pipeline_crops_flips_and_normalizes_like_numpy(input_norm):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 10, 12, 3), np.uint8)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    layer = ImagePipeline(
        images,
        crop=(6, 8),
        pixel_max=255.0,
        input_norm=input_norm,
        norm_mean=mean,
        norm_std=std,
    )
    rows = np.array(
        [[0, 0, 0, 0], [3, 1, 4, 4], [6, 1, 0, 2], [2, 0, 2, 1], [3, 0, 4, 4]],
        np.int32,
    )
    got = keras.ops.convert_to_numpy(layer(rows))
    want = _reference(images, rows, (6, 8), 255.0, input_norm, mean, std)
    assert got.dtype == np.float32 and got.shape == (5, 6, 8, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pipeline_without_crop_flips_whole_images():
    images = np.arange(2 * 4 * 5, dtype=np.uint8).reshape(2, 4, 5, 1)
    layer = ImagePipeline(images, crop=None, flip=True, pixel_max=16.0)
    rows = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], np.int32)
    got = keras.ops.convert_to_numpy(layer(rows))
    np.testing.assert_allclose(got[0], images[1][:, ::-1] / 16.0, rtol=1e-6)
    np.testing.assert_allclose(got[1], images[0] / 16.0, rtol=1e-6)


def _synthetic_crop_splits(**kwargs):
    """A small CIFAR-like set stored at 12x12, cropped to 8x8, flipped."""
    spec = dataclasses.replace(DATASETS["synthetic"], crop=(8, 8))
    rng = np.random.default_rng(1)
    raw = RawData(
        rng.integers(0, 256, (60, 12, 12, 3), np.uint8),
        np.arange(60) % 5,
        rng.integers(0, 256, (15, 12, 12, 3), np.uint8),
        np.arange(15) % 5,
        tuple("abcde"),
    )
    return MemorySplits(spec, raw, kwargs.get("batch_size", 16), "bn", True)


def test_epoch_rows_are_a_pure_function_of_seed_and_epoch():
    splits = _synthetic_crop_splits()
    rows, labels = splits.epoch_rows(3, 2)
    again, _ = splits.epoch_rows(3, 2)
    np.testing.assert_array_equal(rows, again)
    assert not np.array_equal(rows, splits.epoch_rows(3, 1)[0])
    assert not np.array_equal(rows, splits.epoch_rows(4, 2)[0])
    # The paper's seeds (Section 4.3): PCG64 keyed by [md5 seed, epoch].
    rng = np.random.Generator(np.random.PCG64([make_complex(3), 2]))
    order = rng.permutation(splits.num_train)
    np.testing.assert_array_equal(rows[:, 0], order)
    assert sorted(rows[:, 0]) == list(range(splits.num_train))
    np.testing.assert_array_equal(labels, splits.arrays("train")[1][order])
    assert set(rows[:, 1]) == {0, 1}
    assert rows[:, 2].min() >= 0 and rows[:, 2].max() <= 4
    assert rows[:, 3].min() >= 0 and rows[:, 3].max() <= 4
    assert rows.dtype == np.int32


def test_no_flip_and_no_crop_draw_nothing():
    splits = load_memory_dataset("digits")
    rows, _ = splits.epoch_rows(1, 0)
    assert not rows[:, 1:].any()


def test_eval_rows_give_each_split_center_cropped():
    splits = _synthetic_crop_splits()
    pipeline = splits.pipeline()
    for split in ("train", "val", "test"):
        rows, labels = splits.eval_rows(split)
        images, want_labels = splits.arrays(split)
        np.testing.assert_array_equal(labels, want_labels)
        got = keras.ops.convert_to_numpy(pipeline(rows))
        np.testing.assert_allclose(
            got, images[:, 2:10, 2:10] / 255.0, rtol=1e-6
        )
        # Rows start no pipeline: evaluate gets them as they are, no steps.
        data, steps = splits.eval_inputs(split, steps_per_execution=3)
        assert steps is None and len(data) == len(splits.eval_data(split))
        np.testing.assert_array_equal(data[0][0], rows[: splits.batch_size])


def test_fit_data_follow_the_tracked_epoch():
    splits = _synthetic_crop_splits(batch_size=16)
    tracker = EpochTracker()
    data = splits.fit_train_data(5, tracker)
    assert len(data) == splits.steps_per_epoch == 4  # 54 examples
    fit_data, steps = splits.fit_inputs(5, tracker, epochs=3)
    assert steps is None and len(fit_data) == 4  # one epoch per iterator
    tracker.on_epoch_begin(2)
    rows, labels = splits.epoch_rows(5, 2)
    x, y = data[3]
    np.testing.assert_array_equal(x, rows[48:])
    np.testing.assert_array_equal(y, labels[48:])
    with pytest.raises(ValueError, match="EpochTracker"):
        splits.fit_train_data(5, object())


def test_memory_and_tfdata_load_the_same_arrays():
    spec, raw = load_raw("synthetic", size=200)
    memory = load_memory_dataset("synthetic", size=200)
    assert (memory.num_train, memory.num_val, memory.num_test) == (180, 20, 40)
    np.testing.assert_array_equal(raw.train_labels, np.arange(200) % 10)
    images, labels = memory.arrays("val")
    np.testing.assert_array_equal(images, raw.train_images[memory.val_indices])
    assert memory.describe()["input"] == "memory"
    with pytest.raises(ValueError, match="synthetic data set only"):
        load_raw("digits", size=10)


def test_weights_hold_the_model_not_the_images(tmp_path):
    splits = load_memory_dataset("digits", batch_size=64)
    model = tiny_builder("tiny", 10, splits.input_shape, 0.1, True, 0.58, _bn)
    wrapper = splits.training_model(model)
    path = str(tmp_path / "w.weights.h5")
    wrapper.save_weights(path)
    with h5py.File(path) as f:
        sizes = []
        f.visititems(
            lambda name, obj: (
                sizes.append(obj.size)
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    weights = sum(int(np.prod(v.shape)) for v in model.weights)
    assert sum(sizes) == weights  # no uint8 image store
    other = splits.training_model(
        tiny_builder("tiny", 10, splits.input_shape, 0.1, True, 0.58, _bn)
    )
    other.load_weights(path)
    rows = splits.eval_rows("test")[0][:8]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(other(rows)),
        keras.ops.convert_to_numpy(wrapper(rows)),
        rtol=1e-6,
    )


def _bn(gamma, name, moving_variance="biased"):
    from keras_bninit import batch_norm

    return batch_norm(gamma=gamma, name=name, moving_variance=moving_variance)


def _config(tmp_path, **kwargs):
    values = {
        "dataset": "digits",
        "model": "tiny",
        "epochs": 2,
        "out": str(tmp_path),
        "verbose": 0,
        "seed": 3,
        "input": "memory",
        "deterministic": True,
    }
    return RunConfig(**{**values, **kwargs})


def test_memory_run_resumes_exactly(tmp_path):
    whole = run_experiment(_config(tmp_path / "a"), build_model=tiny_builder)
    with pytest.raises(Crash):
        run_experiment(
            _config(tmp_path / "b"),
            build_model=tiny_builder,
            callbacks=[CrashAt(1)],
        )
    resumed = run_experiment(_config(tmp_path / "b"), build_model=tiny_builder)
    assert whole["status"] == resumed["status"] == "ok"
    assert whole["config"]["input"] == "memory"
    for key in ("loss", "val_accuracy", "val_loss"):
        np.testing.assert_allclose(
            resumed["history"][key], whole["history"][key], rtol=1e-5
        )
    assert resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"])
    loaded = keras.saving.load_model(f"{whole['run_dir']}/model.keras")
    assert loaded.input_shape == (None, 8, 8, 1)  # images in, not rows


def test_memory_and_tfdata_are_different_runs(tmp_path):
    memory = _config(tmp_path)
    tfdata = dataclasses.replace(memory, input="tfdata")
    assert memory.key() != tfdata.key()
    assert memory.run_name() != tfdata.run_name()


def test_checkpoints_leave_the_image_store_out(tmp_path):
    from keras_bninit.harness import checkpoints

    splits = load_memory_dataset("digits", batch_size=64)
    model = tiny_builder("tiny", 10, splits.input_shape, 0.1, True, 0.58, _bn)
    wrapper = splits.training_model(model)
    wrapper.compile(
        keras.optimizers.SGD(0.1, momentum=0.9),
        "sparse_categorical_crossentropy",
    )
    wrapper.fit(*splits.eval_rows("val"), batch_size=64, verbose=0)
    values = checkpoints._snapshot(wrapper)
    expected = len(model.variables) + len(wrapper.optimizer.variables)
    assert len(values) == expected
    assert all(v.dtype != np.uint8 for v in values)
    # The background writer learns the file layout of the wrapper.
    layout = checkpoints._learn_layout(wrapper, values, str(tmp_path))
    assert layout is not None
