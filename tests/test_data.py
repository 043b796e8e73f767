"""Tests for keras_bninit.harness.data: offline only (digits, tfds mocks,
a folder)."""

import dataclasses
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.model_selection import train_test_split

from keras_bninit.harness import data
from keras_bninit.seeding import make_complex

PAPER_SETS = ("cifar10", "cifar100", "caltech_birds2011", "cars196")


@pytest.fixture(scope="module")
def digits():
    return data.load_dataset("digits")


def _batches(dataset):
    """All batches as NumPy `(images, labels)` pairs."""
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def _concat(batches):
    return (
        np.concatenate([x for x, _ in batches]),
        np.concatenate([y for _, y in batches]),
    )


def _same_batches(a, b):
    return len(a) == len(b) and all(
        np.array_equal(xa, xb) and np.array_equal(ya, yb)
        for (xa, ya), (xb, yb) in zip(a, b)
    )


# -- registry and argument errors --------------------------------------------


def test_available_datasets_lists_the_paper_sets_and_offline_ones():
    names = data.available_datasets()
    assert set(PAPER_SETS) | {"digits", "directory", "synthetic"} == set(names)
    assert list(names) == sorted(names)
    assert data.DATASETS["cifar10"].batch_size == 128
    assert data.DATASETS["digits"].batch_size == 64
    for name in ("caltech_birds2011", "cars196"):
        spec = data.DATASETS[name]
        assert (spec.batch_size, spec.resize, spec.crop) == (
            64,
            (256, 256),
            (224, 224),
        )


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'") as e:
        data.load_dataset("imagenet")
    for name in data.available_datasets():
        assert name in str(e.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_norm": "zca"}, "input_norm"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load_dataset("digits", **kwargs)


@pytest.mark.parametrize("name", PAPER_SETS)
def test_missing_tfds_data_set_says_how_to_get_it(tmp_path, name):
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load_dataset(name, data_dir=str(tmp_path))
    message = str(error.value)
    assert "offline" in message and str(tmp_path) in message
    if name == "cars196":
        assert f"{tmp_path}/downloads/manual/" in message
        for file in (
            "cars_train.tgz",
            "cars_test.tgz",
            "car_devkit.tgz",
            "cars_test_annos_withlabels.mat",
        ):
            assert file in message
    else:
        assert "download=True" in message


def test_missing_directory_is_bad_input(tmp_path):
    with pytest.raises(ValueError, match="needs a folder with one subfolder"):
        data.load_dataset("directory", data_dir=str(tmp_path / "absent"))


@pytest.mark.parametrize("case", ["empty", "one class", "no images", "etc"])
def test_a_folder_that_is_not_an_image_data_set_is_bad_input(tmp_path, case):
    from keras_bninit.harness.datasets import ensure_available

    folder = tmp_path / "data"
    folder.mkdir()
    if case == "one class":
        (folder / "cat").mkdir()
        (folder / "cat" / "a.png").write_bytes(b"x")
    elif case == "no images":
        for name in ("cat", "dog"):
            (folder / name).mkdir()
            (folder / name / "notes.txt").write_text("x")
    elif case == "etc":
        folder = "/etc"
    with pytest.raises(ValueError, match="is not an image data set"):
        ensure_available(str(folder))


# -- the validation split ----------------------------------------------------


def test_split_is_the_reference_draw():
    labels = np.repeat(np.arange(7), [30, 41, 25, 60, 33, 28, 50])
    train, val = data.validation_split(labels)
    # The reference seeds NumPy's global generator, then lets scikit-learn
    # use it; do exactly that, restoring the global state afterwards.
    state = np.random.get_state()
    try:
        np.random.seed(make_complex(0))
        ref_train, ref_val = train_test_split(
            np.arange(len(labels)), test_size=0.1, stratify=labels
        )
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(train, ref_train)
    np.testing.assert_array_equal(val, ref_val)


def test_split_is_deterministic_disjoint_complete_and_stratified():
    labels = np.random.RandomState(3).randint(0, 10, size=1000)
    train, val = data.validation_split(labels)
    train2, val2 = data.validation_split(labels)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert not set(train) & set(val)
    assert sorted(np.concatenate([train, val])) == list(range(1000))
    assert len(val) == 100
    for c in range(10):
        per_class = np.sum(labels == c)
        assert abs(np.sum(labels[val] == c) - 0.1 * per_class) <= 1
    other, _ = data.validation_split(labels, seed=1)
    assert not np.array_equal(train, other)


def test_split_rejects_what_cannot_be_stratified():
    with pytest.raises(ValueError, match="at least 2 examples per class"):
        data.validation_split(np.array([0, 0, 0, 1] * 10 + [2]))
    with pytest.raises(ValueError, match="fraction"):
        data.validation_split(np.zeros(10), fraction=1.5)


# -- digits: real data, pipelines --------------------------------------------


def test_digits_metadata_and_counts(digits):
    info = digits.describe()
    assert info["num_classes"] == 10 and info["input_shape"] == [8, 8, 1]
    assert info["batch_size"] == 64 and info["flip"] is False
    assert digits.num_train + digits.num_val + digits.num_test == 1797
    assert digits.num_test == math.ceil(0.2 * 1797)
    assert digits.num_val == math.ceil(0.1 * (1797 - digits.num_test))
    assert digits.steps_per_epoch == math.ceil(digits.num_train / 64)


def test_train_epoch_shapes_values_and_coverage(digits):
    batches = _batches(digits.train_dataset(seed=1, epoch=0))
    assert len(batches) == digits.steps_per_epoch
    assert digits.train_dataset(1, 0).cardinality().numpy() == len(batches)
    images, labels = _concat(batches)
    assert images.shape == (digits.num_train, 8, 8, 1)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() == 1.0
    # Without augmentation an epoch is a permutation of the training split.
    plain, plain_labels = _concat(_batches(digits.train_eval_dataset()))
    key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))  # noqa: E731
    assert key(images) == key(plain)
    assert sorted(labels) == sorted(plain_labels)


def test_train_data_is_a_function_of_seed_and_epoch(digits):
    epoch = _batches(digits.train_dataset(seed=1, epoch=3))
    assert _same_batches(epoch, _batches(digits.train_dataset(1, 3)))
    assert not _same_batches(epoch, _batches(digits.train_dataset(1, 4)))
    assert not _same_batches(epoch, _batches(digits.train_dataset(2, 3)))


def test_epoch_stream_equals_the_separate_epochs(digits):
    stream = digits.train_epochs(seed=5, start_epoch=2, end_epoch=4)
    assert stream.cardinality().numpy() == 2 * digits.steps_per_epoch
    separate = _batches(digits.train_dataset(5, 2)) + _batches(
        digits.train_dataset(5, 3)
    )
    assert _same_batches(_batches(stream), separate)
    with pytest.raises(ValueError, match="end_epoch"):
        digits.train_epochs(5, 3, 3)
    with pytest.raises(ValueError, match="seed"):
        digits.train_epochs(-1, 0, 1)


def test_flip_is_seeded_per_epoch_and_only_mirrors():
    flipped = data.load_dataset("digits", flip=True)
    assert flipped.flip

    def row_sums(images):  # invariant under a horizontal flip
        return sorted(map(bytes, images.sum(axis=2).reshape(len(images), -1)))

    def image_set(batches):  # the epoch's images, whatever their order
        return sorted(map(bytes, _concat(batches)[0]))

    first = _batches(flipped.train_dataset(1, 0))
    assert _same_batches(first, _batches(flipped.train_dataset(1, 0)))
    plain = _batches(flipped.train_eval_dataset())
    assert row_sums(_concat(first)[0]) == row_sums(_concat(plain)[0])
    assert image_set(first) != image_set(plain)  # some images are mirrored
    # Same examples, other mirrors: the set of images changes with the epoch.
    assert image_set(first) != image_set(_batches(flipped.train_dataset(1, 1)))


def test_eval_pipelines_have_no_randomness(digits):
    for make in (digits.val_dataset, digits.test_dataset):
        batches = _batches(make())
        assert _same_batches(batches, _batches(make()))
        images, labels = _concat(batches)
        assert images.min() >= 0.0 and images.max() <= 1.0
        assert len(labels) in (digits.num_val, digits.num_test)
        # Pixels are the stored 0..16 values scaled to [0, 1], unchanged.
        np.testing.assert_array_equal(images * 16, np.round(images * 16))


@pytest.mark.parametrize("norm", ["none", "fixed", "offline"])
def test_input_normalization_statistics(digits, norm):
    plain, _ = _concat(_batches(digits.train_eval_dataset()))
    splits = data.load_dataset("digits", input_norm=norm)
    images, _ = _concat(_batches(splits.train_eval_dataset()))
    if norm == "none":
        np.testing.assert_array_equal(images, plain)
        assert splits.norm_mean is None
    elif norm == "fixed":
        # The reference's (x - 128) / 128 for 8-bit pixels; digits has the
        # 17 levels 0..16, so (x - 8.5) / 8.5.
        np.testing.assert_allclose(images, (plain * 16 - 8.5) / 8.5, atol=1e-6)
        assert images.min() == -1.0 and images.max() == 7.5 / 8.5
    else:
        np.testing.assert_allclose(splits.norm_mean, plain.mean(), rtol=1e-5)
        np.testing.assert_allclose(splits.norm_std, plain.std(), rtol=1e-4)
        np.testing.assert_allclose(images.mean(), 0.0, atol=1e-4)
        np.testing.assert_allclose(images.std(), 1.0, atol=1e-4)
        test, _ = _concat(_batches(splits.test_dataset()))
        assert abs(test.mean()) < 0.1  # same statistics applied everywhere


# -- model.fit follows the epoch, also after BackupAndRestore ----------------


class _Probe(keras.Model):
    """Reports a checksum of every training batch instead of training."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(keras.ops.reshape(x, (-1, 64)))

    def train_step(self, batch):
        x, y = batch
        weights = tf.cast(tf.range(1, tf.size(x) + 1) % 97, tf.float32)
        return {
            "x_sum": tf.reduce_sum(tf.reshape(x, [-1]) * weights),
            "y_sum": tf.reduce_sum(tf.cast(y, tf.float32)),
        }


class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.seen[epoch] = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen[self.epoch].append(
            (round(float(logs["x_sum"]), 2), float(logs["y_sum"]))
        )


def _expected_sums(splits, seed, epoch):
    sums = []
    for x, y in _batches(splits.train_dataset(seed, epoch)):
        flat = x.reshape(-1).astype(np.float32)
        weights = (np.arange(1, flat.size + 1) % 97).astype(np.float32)
        sums.append((round(float(np.sum(flat * weights)), 2), float(y.sum())))
    return sums


def _fit(splits, epochs, backup_dir=None, stream_from=None, whole_run=False):
    """Fits `_Probe`; with `stream_from`, on `train_epochs` from there; with
    `whole_run`, on `fit_inputs`'s one iterator for all epochs."""
    model = _Probe()
    model.compile(optimizer="sgd", loss="mse", jit_compile=False)
    model(np.zeros((1, 8, 8, 1), np.float32))
    tracker, recorder = data.EpochTracker(), _Recorder()
    callbacks = [tracker, recorder]
    if backup_dir is not None:
        callbacks.append(
            keras.callbacks.BackupAndRestore(
                str(backup_dir), delete_checkpoint=False
            )
        )
    if whole_run:
        x, steps = splits.fit_inputs(3, tracker, epochs)
        assert steps == splits.steps_per_epoch
        kwargs = {"steps_per_epoch": steps}
    elif stream_from is None:
        x, kwargs = splits.fit_train_dataset(seed=3, tracker=tracker), {}
    else:
        x = splits.train_epochs(3, stream_from, epochs)
        kwargs = {
            "initial_epoch": stream_from,
            "steps_per_epoch": splits.steps_per_epoch,
        }
    model.fit(x, epochs=epochs, callbacks=callbacks, verbose=0, **kwargs)
    return recorder.seen


def test_fit_sees_each_epochs_data_also_after_a_resume(digits, tmp_path):
    first = _fit(digits, 2, tmp_path)
    assert sorted(first) == [0, 1]
    for epoch, sums in first.items():
        assert sums == _expected_sums(digits, 3, epoch)
    resumed = _fit(digits, 4, tmp_path)  # BackupAndRestore resumes at 2
    assert sorted(resumed) == [2, 3]
    for epoch, sums in resumed.items():
        assert sums == _expected_sums(digits, 3, epoch)


@pytest.mark.parametrize("backup", [False, True])
def test_fit_on_one_iterator_for_the_whole_run(digits, tmp_path, backup):
    # Keras keeps the iterator from epoch to epoch; each epoch's batches
    # are still its own, also when BackupAndRestore resumes at epoch 2.
    backup_dir = tmp_path if backup else None
    seen = _fit(digits, 2, backup_dir, whole_run=True)
    if backup:
        seen = _fit(digits, 4, backup_dir, whole_run=True)
    assert sorted(seen) == ([2, 3] if backup else [0, 1])
    for epoch, sums in seen.items():
        assert sums == _expected_sums(digits, 3, epoch)


def test_fit_on_an_epoch_stream_from_initial_epoch(digits):
    seen = _fit(digits, 3, stream_from=1)
    assert sorted(seen) == [1, 2]
    for epoch, sums in seen.items():
        assert sums == _expected_sums(digits, 3, epoch)


def test_fit_train_dataset_needs_a_tracker(digits):
    with pytest.raises(ValueError, match="EpochTracker"):
        digits.fit_train_dataset(1, tracker=None)
    with pytest.raises(ValueError, match="EpochTracker"):
        digits.fit_train_data(1, tracker=None)
    with pytest.raises(ValueError, match="seed"):
        digits.fit_train_data(-1, tracker=data.EpochTracker())


def test_fit_train_data_is_one_stream_that_each_run_points_at_its_seed():
    splits = data.load_dataset("digits", batch_size=256)  # 6 batches
    streams = []
    for seed, epochs in ((1, (0, 2)), (2, (1,)), (1, (3,))):
        tracker = data.EpochTracker()
        stream, steps = splits.fit_inputs(seed, tracker)
        assert steps is None  # one epoch per iterator
        assert splits.fit_train_data(seed, tracker) is stream
        streams.append(stream)
        for epoch in epochs:
            tracker.on_epoch_begin(epoch)
            assert _same_batches(
                _batches(stream), _batches(splits.train_dataset(seed, epoch))
            ), (seed, epoch)
    assert all(s is streams[0] for s in streams)  # built once
    # Its batches are those of a stream of one's own, and a stream given
    # out before follows the latest call.
    tracker = data.EpochTracker(initial_epoch=4)
    splits.fit_train_data(5, tracker)
    expected = _batches(splits.train_dataset(5, 4))
    assert not _same_batches(expected, _batches(splits.train_dataset(1, 4)))
    assert _same_batches(_batches(streams[0]), expected)
    assert _same_batches(
        _batches(splits.fit_train_dataset(5, tracker)), expected
    )
    # With fit's epochs: one iterator from the tracked epoch to the end,
    # built once too, pointed at each run in turn.
    whole = []
    for seed, start, end in ((1, 0, 2), (2, 1, 4)):
        tracker = data.EpochTracker(initial_epoch=start)
        stream, steps = splits.fit_inputs(seed, tracker, end)
        assert steps == splits.steps_per_epoch == 6
        whole.append(stream)
        assert _same_batches(
            _batches(stream), _batches(splits.train_epochs(seed, start, end))
        ), (seed, start, end)
    assert whole[0] is whole[1] and whole[0] is not streams[0]
    # Without autotuning's model thread, which destroying an iterator
    # waited for (up to 2.5 s at the end of a fit); still deterministic.
    for pipeline in (whole[0], streams[0], splits.eval_data("val")):
        assert pipeline.options().autotune.enabled is False
        assert pipeline.options().deterministic is True
    # A dispatch of 4 steps would reach into the next epoch's batches:
    # one epoch per iterator then, and Keras told no steps.
    tracker = data.EpochTracker(initial_epoch=2)
    stream, steps = splits.fit_inputs(1, tracker, 4, steps_per_execution=4)
    assert steps is None and stream is streams[0]
    assert _same_batches(_batches(stream), _batches(splits.train_dataset(1, 2)))
    assert splits.fit_inputs(1, tracker, 4, steps_per_execution=3)[1] == 6
    with pytest.raises(ValueError, match="epochs"):
        splits.fit_inputs(1, tracker, -1)
    with pytest.raises(ValueError, match="epochs"):
        splits.fit_inputs(1, tracker, -1, steps_per_execution=4)
    with pytest.raises(ValueError, match="steps_per_execution"):
        splits.fit_inputs(1, tracker, 4, steps_per_execution=0)


def test_eval_data_is_one_pipeline_per_split(digits):
    for split, own in (
        ("val", digits.val_dataset),
        ("test", digits.test_dataset),
        ("train", digits.train_eval_dataset),
    ):
        pipeline = digits.eval_data(split)
        assert digits.eval_data(split) is pipeline
        assert _same_batches(_batches(pipeline), _batches(own()))
    with pytest.raises(ValueError, match="split"):
        digits.eval_data("dev")


def test_eval_inputs_give_one_pass_per_evaluate_on_one_iterator(
    digits, monkeypatch
):
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile(
        "sgd",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    started, iterate = [], tf.data.Dataset.__iter__

    def counted(dataset):
        started.append(dataset)
        return iterate(dataset)

    monkeypatch.setattr(tf.data.Dataset, "__iter__", counted)
    assert digits.batch_size == 64
    for split, steps_ in (("val", 3), ("test", 6), ("train", 21)):
        data_, steps = digits.eval_inputs(split)
        assert steps == steps_  # 144, 360 and 1293 examples
        assert digits.eval_inputs(split)[0] is data_  # built once
        one_pass = _batches(digits.eval_data(split))
        # Pass after pass, the split's batches in its fixed order.
        assert _same_batches(_batches(data_.take(2 * steps)), one_pass * 2)
        expected = model.evaluate(
            digits.eval_data(split), verbose=0, return_dict=True
        )
        started.clear()
        got = [
            model.evaluate(data_, steps=steps, verbose=0, return_dict=True)
            for _ in range(2)
        ]
        assert len(started) == 2  # one iterator per evaluate
        assert got == [expected, expected]  # bit for bit
    assert data_.options().autotune.enabled is False
    # A dispatch of 2 or 4 steps would reach into the next pass: the
    # finite pipeline then, and no steps.
    assert digits.eval_inputs("val", 2) == (digits.eval_data("val"), None)
    assert digits.eval_inputs("test", 4) == (digits.eval_data("test"), None)
    assert digits.eval_inputs("test", 3)[1] == 6
    with pytest.raises(ValueError, match="steps_per_execution"):
        digits.eval_inputs("val", 0)


# -- tensorflow-datasets paths, mocked ---------------------------------------


def _lean_mock(num_examples):
    """A mock `_as_dataset`: balanced labels, images of varying sizes."""

    def as_dataset(builder, split, decoders=None, read_config=None, **kw):
        del split, decoders, read_config, kw
        classes = builder.info.features["label"].num_classes

        def example(i):
            size = tf.stack([5 + i % 40, 5 + (7 * i) % 40, 3])
            image = tf.random.stateless_uniform(
                size, seed=tf.stack([i, 0]), maxval=256, dtype=tf.int64
            )
            return {"image": tf.cast(image, tf.uint8), "label": i % classes}

        return tf.data.Dataset.range(num_examples).map(example)

    return as_dataset


@pytest.mark.parametrize(
    "name, classes, examples", [("cifar10", 10, 200), ("cifar100", 100, 1200)]
)
def test_cifar_through_tfds_mock(name, classes, examples):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=examples):
        splits = data.load_dataset(name, input_norm="offline")
    assert splits.num_classes == classes and len(splits.class_names) == classes
    assert splits.input_shape == (32, 32, 3) and splits.batch_size == 128
    # mock_data's splits metadata is empty: counts come from the examples.
    assert splits.num_train + splits.num_val == examples
    assert splits.num_test == examples
    assert splits.num_val == math.ceil(0.1 * examples)
    assert len(splits.norm_mean) == 3 and len(splits.norm_std) == 3
    x, y = next(iter(splits.train_dataset(0, 0)))
    assert x.shape == (128, 32, 32, 3) and x.dtype == tf.float32
    assert y.dtype == tf.int64 and int(tf.reduce_max(y)) < classes


@pytest.mark.parametrize(
    "name, classes", [("caltech_birds2011", 200), ("cars196", 196)]
)
def test_cub_and_cars_through_tfds_mock(monkeypatch, name, classes):
    tfds = pytest.importorskip("tensorflow_datasets")
    # Same code path, small sizes: resize to 20x20, crop 16x16.
    small = dataclasses.replace(
        data.DATASETS[name], resize=(20, 20), crop=(16, 16)
    )
    monkeypatch.setitem(data.DATASETS, name, small)
    examples = 10 * classes
    with tfds.testing.mock_data(as_dataset_fn=_lean_mock(examples)):
        splits = data.load_dataset(name)
    assert splits.num_classes == classes and splits.batch_size == 64
    assert splits.input_shape == (16, 16, 3)
    assert splits.num_val == examples // 10 and splits.num_test == examples
    epoch = _batches(splits.train_dataset(1, 0))
    assert len(epoch) == splits.steps_per_epoch
    assert epoch[0][0].shape == (64, 16, 16, 3)
    assert 0.0 <= epoch[0][0].min() and epoch[0][0].max() <= 1.0
    assert _same_batches(epoch, _batches(splits.train_dataset(1, 0)))
    assert not _same_batches(epoch, _batches(splits.train_dataset(1, 1)))
    val = _batches(splits.val_dataset())
    assert val[0][0].shape[1:] == (16, 16, 3)
    assert _same_batches(val, _batches(splits.val_dataset()))


# -- a directory of class subfolders -----------------------------------------


def _write_images(root, classes=("cat", "dog", "emu"), per_class=10):
    rng = np.random.RandomState(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.randint(0, 256, size=(12, 10, 3)).astype(np.uint8)
            keras.utils.save_img(str(root / name / f"{i}.png"), image)


def test_directory_of_class_subfolders(tmp_path):
    _write_images(tmp_path / "folder")
    splits = data.load_dataset(str(tmp_path / "folder"), image_size=(8, 8))
    assert splits.name == "directory"
    assert splits.class_names == ("cat", "dog", "emu")
    assert splits.input_shape == (8, 8, 3) and splits.flip
    assert splits.num_train + splits.num_val + splits.num_test == 30
    x, _ = next(iter(splits.train_dataset(0, 0)))
    assert x.shape == (splits.num_train, 8, 8, 3)
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_directory_with_train_and_test_folders(tmp_path):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "test", per_class=4)
    splits = data.load_dataset(
        "directory", data_dir=str(tmp_path), image_size=(6, 6)
    )
    assert splits.num_test == 12 and splits.num_train + splits.num_val == 30
    _, labels = _concat(_batches(splits.test_dataset()))
    assert sorted(labels) == sorted([0, 1, 2] * 4)


def test_augmentation_does_not_depend_on_batching():
    # Seeds come from (seed, epoch, example id), never from the batch.
    small = data.load_dataset("digits", flip=True, batch_size=50)
    large = data.load_dataset("digits", flip=True, batch_size=128)
    a = _concat(_batches(small.train_dataset(7, 2)))
    b = _concat(_batches(large.train_dataset(7, 2)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
