"""tf.data input pipelines (Section 4.2).

The data sets themselves (loaders, the validation split, the arrays of each
split) are `harness.datasets`, which needs no TensorFlow; this module adds
the tf.data input path (`--input tfdata`). TensorFlow is imported through
`harness._tf.tensorflow()`, which hides the GPUs from it when Keras trains
on JAX or PyTorch. The in-memory path is `harness.memory`.

1. The training pipeline of epoch `e` under run seed `s` is a pure function
   of `(s, e)`: the example order is a stateless shuffle seeded from
   `(make_complex(s), e)`, and the random augmentation of each example is
   seeded from `(make_complex(s), e, example index)` with the
   `tf.image.stateless_random_*` ops. Nothing depends on global random state
   or on how many batches were drawn before, so a run resumed at epoch `k`
   sees exactly the data an uninterrupted run sees from epoch `k` on.
2. `model.fit` learns the epoch through `EpochTracker`: Keras calls
   `on_epoch_begin(epoch)` before it creates that epoch's iterator (also
   for the first epoch of a resumed run, `initial_epoch`), and
   `DatasetSplits.fit_train_dataset` reads the tracked epoch when an
   iterator is created. `train_epochs(seed, start, end)` is the explicit
   alternative: one finite stream of exactly
   `steps_per_epoch * (end - start)` batches. The harness's runs train
   on one iterator from the tracked epoch to the run's
   last (`fit_inputs`), which Keras keeps across epochs.

Every epoch ends with its own (possibly partial) last batch, as PyTorch's
`DataLoader(drop_last=False)` in the reference. Evaluation pipelines have no
randomness. Pixels reach the network in [0, 1], then the selected input
normalization is applied (`bn` leaves it to the network's `InputBatchNorm`).
"""

import numpy as np

from keras_bninit._validation import non_negative_int, positive_int
from keras_bninit.harness._tf import tensorflow
from keras_bninit.harness.datasets import (  # noqa: F401  (public here too)
    DATASETS,
    DIRECTORY,
    INPUT_NORMS,
    SYNTHETIC,
    TEST_FRACTION,
    DatasetSpec,
    DatasetUnavailableError,
    available_datasets,
    ensure_available,
    load_raw,
    validation_split,
)
from keras_bninit.harness.splits import (  # noqa: F401  (public here too)
    EpochTracker,
    SplitArrays,
    prepare,
)
from keras_bninit.seeding import make_complex

tf = tensorflow()
_AUTOTUNE = tf.data.AUTOTUNE
# The pipelines' functions branch on Python values only (the split's crop,
# flip and input normalization), never on tensors: tf.data traces them as
# they are, without AutoGraph rewriting their source first (0.17 s per
# process for the demo's four, 2 CPU cores; the same graphs).
_traced_as_written = tf.autograph.experimental.do_not_convert


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


def _seed_pair(seed):
    """The stateless seed of a run's data: `[make_complex(seed), 0]`."""
    return np.array([make_complex(seed), 0], np.int64)


def _checked_feed(seed, tracker, end_epoch=None):
    seed = non_negative_int("seed", seed)
    if not isinstance(tracker, EpochTracker):
        raise ValueError(
            "`tracker` must be a keras_bninit.harness.data.EpochTracker. "
            f"Received: tracker={tracker!r}"
        )
    if end_epoch is not None:
        end_epoch = non_negative_int("epochs", end_epoch)
    return seed, tracker, end_epoch


def _whole_dispatches(steps, steps_per_execution):
    """Whether dispatches of `steps_per_execution` steps cover `steps`
    exactly; else the last would reach into the next epoch's (or pass's)
    batches of a stream that goes on."""
    return steps % positive_int("steps_per_execution", steps_per_execution) == 0


def _fed_points(feed):
    """The `(seed pair, epoch)` points of one iterator, read from `feed[0]`
    (a `(seed, EpochTracker, end epoch or None)`) when the iterator starts:
    the tracker's epoch, then (with an end) each epoch up to the end."""

    def points():
        seed, tracker, end_epoch = feed[0]
        pair, start = _seed_pair(seed), tracker.current_epoch()
        end = start + 1 if end_epoch is None else end_epoch
        for epoch in range(start, end):
            yield pair, np.int64(epoch)

    return tf.data.Dataset.from_generator(
        points,
        output_signature=(
            tf.TensorSpec((2,), tf.int64),
            tf.TensorSpec((), tf.int64),
        ),
    )


class DatasetSplits(SplitArrays):
    """A loaded data set: train/val/test arrays, metadata and pipelines.

    Build it with `load_dataset`. Images are held as uint8; every pipeline
    yields `(images, labels)` batches of float32 images (input normalization
    applied) and int64 labels.

    Its attributes (name, classes, shapes, counts, steps per epoch, the
    split's example ids, the input normalization's statistics) are those of
    `harness.splits.SplitArrays`, which both input paths share.
    """

    input_path = "tfdata"
    _train_tensors = None  # made eagerly, once, then captured
    _fit_feed = None  # [(seed, tracker, end)] the shared fit streams read
    _fit_streams = None  # {whole run: bool -> stream}

    # -- per-example transforms ---------------------------------------------

    def _finish(self, image):
        """uint8 -> float32 in [0, 1] -> the selected input normalization."""
        if self.input_norm == "fixed":
            # The reference's (x - 128) / 128 on 8-bit pixels: half the
            # number of levels (256 / 2), here (pixel_max + 1) / 2.
            half = (self.pixel_max + 1.0) / 2.0
            return (tf.cast(image, tf.float32) - half) / half
        image = tf.cast(image, tf.float32) / self.pixel_max
        if self.input_norm == "offline":
            image = (image - self.norm_mean) / self.norm_std
        return image

    def _augment(self, image, seed):
        flip_seed, crop_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, num=2)
        )
        if self.crop is not None:
            size = (*self.crop, self.input_shape[-1])
            image = tf.image.stateless_random_crop(image, size, seed=crop_seed)
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(
                image, seed=flip_seed
            )
        return image

    def _center_crop(self, image):
        if self.crop is None:
            return image
        top, left = self.center_offsets()
        return image[top : top + self.crop[0], left : left + self.crop[1]]

    # -- pipelines ----------------------------------------------------------

    @staticmethod
    def _options(dataset):
        options = tf.data.Options()
        options.deterministic = True
        # Autotuning's model thread made destroying an iterator wait for it:
        # 0.2-2.5 s at the end of a run's fit, up to 3.7 s per demo, and
        # no faster epochs (2 CPU cores). Without it, AUTOTUNE maps and
        # prefetches take TensorFlow's defaults (docs/throughput.md).
        options.autotune.enabled = False
        return dataset.with_options(options)

    def _epoch_batches(self, seed_pair, epoch):
        """The batches of one epoch; `epoch` is an int64 scalar tensor."""
        images, labels, ids = self._train_tensors
        epoch_seed = tf.random.experimental.stateless_fold_in(seed_pair, epoch)
        order_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(epoch_seed, num=2)
        )
        order = tf.random.experimental.stateless_shuffle(
            tf.range(self.num_train, dtype=tf.int64), seed=order_seed
        )

        def example(position):
            example_seed = tf.random.experimental.stateless_fold_in(
                augment_seed, ids[position]
            )
            image = self._augment(images[position], example_seed)
            return self._finish(image), labels[position]

        dataset = tf.data.Dataset.from_tensor_slices(order)
        dataset = dataset.map(
            _traced_as_written(example), num_parallel_calls=_AUTOTUNE
        )
        return dataset.batch(self.batch_size)

    def _stream(self, seed, epochs, num_epochs):
        seed_pair = tf.constant(_seed_pair(seed))
        points = epochs.map(_traced_as_written(lambda e: (seed_pair, e)))
        return self._stream_of(points, num_epochs)

    def _stream_of(self, points, num_epochs):
        """The batches of each `(seed pair, epoch)` element of `points`
        (`num_epochs` of them, or None: not known in advance)."""
        if self._train_tensors is None:  # made eagerly, once, then captured
            self._train_tensors = (
                tf.constant(self._train[0]),
                tf.constant(self._train[1]),
                tf.constant(self.train_indices),
            )
        dataset = points.flat_map(_traced_as_written(self._epoch_batches))
        if num_epochs is not None:
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(
                    num_epochs * self.steps_per_epoch
                )
            )
        return self._options(dataset.prefetch(_AUTOTUNE))

    def train_dataset(self, seed, epoch):
        """The training batches of one epoch, a pure function of its args.

        Args:
            seed: non-negative integer run seed (1..15 in the paper); made
                complex by MD5 (Section 4.3).
            epoch: non-negative integer epoch number.

        Returns:
            A `tf.data.Dataset` of exactly `steps_per_epoch` batches: the
            training split in an order drawn from `(seed, epoch)`, each
            example augmented with a seed drawn from `(seed, epoch, index)`.
        """
        return self.train_epochs(seed, epoch, epoch + 1)

    def train_epochs(self, seed, start_epoch, end_epoch):
        """Epochs `[start_epoch, end_epoch)` of training data as one stream.

        Use it with `model.fit(ds, initial_epoch=start_epoch,
        epochs=end_epoch, steps_per_epoch=splits.steps_per_epoch)` or in a
        custom loop. Epoch `e`'s part equals `train_dataset(seed, e)`.

        Returns:
            A `tf.data.Dataset` of exactly
            `steps_per_epoch * (end_epoch - start_epoch)` batches.
        """
        seed = non_negative_int("seed", seed)
        start_epoch = non_negative_int("start_epoch", start_epoch)
        end_epoch = non_negative_int("end_epoch", end_epoch)
        if end_epoch <= start_epoch:
            raise ValueError(
                "`end_epoch` must be greater than `start_epoch`. Received: "
                f"start_epoch={start_epoch}, end_epoch={end_epoch}"
            )
        epochs = tf.data.Dataset.range(start_epoch, end_epoch)
        return self._stream(seed, epochs, end_epoch - start_epoch)

    def fit_train_dataset(self, seed, tracker):
        """Training data for `model.fit` that follows Keras's epoch counter.

        Each iterator created from it yields the batches of
        `tracker.current_epoch()`, read when the iterator starts. Keras makes
        one iterator per epoch after `on_epoch_begin(epoch)` when
        `steps_per_epoch` is not given, so pass `tracker` in the callbacks
        and leave `steps_per_epoch` out:

            tracker = EpochTracker()
            model.fit(splits.fit_train_dataset(seed, tracker), epochs=...,
                      initial_epoch=state.restore(model),
                      callbacks=[tracker, state])  # a harness RunState

        A resumed run then trains on the same data as an uninterrupted one.

        Args:
            seed: non-negative integer run seed.
            tracker: an `EpochTracker` that is among `fit`'s callbacks.

        Returns:
            A `tf.data.Dataset` of `steps_per_epoch` batches per iterator.
        """
        feed = [_checked_feed(seed, tracker)]
        return self._stream_of(_fed_points(feed), 1)

    def _eval_dataset(self, images, labels):
        def example(image, label):
            return self._finish(self._center_crop(image)), label

        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        dataset = dataset.map(
            _traced_as_written(example), num_parallel_calls=_AUTOTUNE
        )
        dataset = dataset.batch(self.batch_size).prefetch(_AUTOTUNE)
        return self._options(dataset)

    def val_dataset(self):
        """Validation batches in a fixed order, no augmentation."""
        return self._eval_dataset(*self._val)

    def test_dataset(self):
        """Test batches in a fixed order, no augmentation."""
        return self._eval_dataset(*self._test)

    def train_eval_dataset(self):
        """The training split without augmentation, in a fixed order."""
        return self._eval_dataset(*self._train)

    # -- the interface run_experiment uses on both input paths --------------

    def fit_model(self, model):
        """The model `fit` trains on this path: `model` itself."""
        return model

    def fit_train_data(self, seed, tracker):
        """Training data for `model.fit`: the batches `fit_train_dataset`
        gives, one epoch per iterator, from the stream of these splits
        that `fit_inputs` points at `seed` and `tracker`."""
        return self.fit_inputs(seed, tracker)[0]

    def fit_inputs(self, seed, tracker, epochs=None, steps_per_execution=1):
        """Training data for `model.fit` and the `steps_per_epoch` to pass
        with it: `(data, steps_per_epoch)`.

        With `epochs` (fit's), one iterator yields the epochs from the
        tracker's (read when it starts) up to `epochs`, each epoch's
        batches those of `train_dataset(seed, epoch)`, and
        `steps_per_epoch` is given: Keras then keeps that iterator from
        epoch to epoch instead of starting a pipeline at every epoch (70 ms
        of each 0.37 s epoch of the demo, 2 CPU cores). Without `epochs`,
        or where `steps_per_execution` does not divide the steps of an
        epoch (a dispatch would reach into the next epoch's batches), it is
        `fit_train_dataset`'s one epoch per iterator, with None.

        The stream is built and traced once per splits, not once per run
        (a sweep worker trains its runs one after another): each call
        points it at its `seed`, `tracker` and `epochs`, and a stream
        returned before follows the latest call.
        """
        seed, tracker, epochs = _checked_feed(seed, tracker, epochs)
        steps = self.steps_per_epoch
        whole_run = _whole_dispatches(steps, steps_per_execution)
        whole_run = whole_run and epochs is not None
        feed = (seed, tracker, epochs if whole_run else None)
        if self._fit_feed is None:
            self._fit_feed, self._fit_streams = [feed], {}
        self._fit_feed[0] = feed
        if whole_run not in self._fit_streams:
            self._fit_streams[whole_run] = self._stream_of(
                _fed_points(self._fit_feed), None if whole_run else 1
            )
        return self._fit_streams[whole_run], steps if whole_run else None

    def train_data(self, seed, epoch):
        """One epoch's augmented training batches (`train_dataset`)."""
        return self.train_dataset(seed, epoch)

    def eval_data(self, split):
        """The batches of "train", "val" or "test" for evaluation; the same
        pipeline for every call (it has no state)."""
        pipelines = self.__dict__.setdefault("_eval_pipelines", {})
        if split not in pipelines:
            pipelines[split] = self._eval_dataset(*self.arrays(split))
        return pipelines[split]

    def eval_inputs(self, split, steps_per_execution=1):
        """Evaluation data for `model.evaluate` (and `fit`'s validation)
        and the steps to pass with it: `(data, steps)`, one pass over
        `eval_data(split)` per call.

        Keras starts an iterator at every `evaluate`; over a finite
        pipeline whose size it knows it also starts the next one as soon as
        a pass ends, for a next pass that the next call never uses (5 ms
        each, 7 per demo run, 2 CPU cores). Here the pipeline repeats and
        `steps` is one pass, so each call starts one iterator and sees the
        same batches in the same order. Where `steps_per_execution` does
        not divide a pass's batches, a dispatch would reach into the next
        pass: then `(eval_data(split), None)`.
        """
        repeated = self.__dict__.setdefault("_eval_repeated", {})
        if split not in repeated:  # its options, too; a pass's batches
            pipeline = self.eval_data(split)
            repeated[split] = (pipeline.repeat(), int(pipeline.cardinality()))
        data, steps = repeated[split]
        if not _whole_dispatches(steps, steps_per_execution):
            return self.eval_data(split), None
        return data, steps

    def probe(self):
        """The diagnostics' probe data: the validation batches."""
        return self.val_dataset()


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def load_dataset(
    name,
    data_dir=None,
    *,
    download=False,
    batch_size=None,
    input_norm="bn",
    flip=None,
    image_size=(32, 32),
    size=None,
):
    """Loads a data set into memory and returns its splits and pipelines.

    The training set is split into training and validation (10 %,
    stratified, seed `make_complex(0)`: `validation_split`). Data sets
    without a test split (digits, a directory without `train/` and `test/`)
    first hold out a stratified `TEST_FRACTION` (20 %) as test set, drawn the
    same way. Section 4.2. `harness.memory.load_memory_dataset` takes the
    same arguments and returns the in-memory input path.

    Args:
        name: one of `available_datasets()` ("digits" needs no download and
            is the offline default), or the path of a directory of class
            subfolders.
        data_dir: tensorflow-datasets' data directory (None: its default,
            `~/tensorflow_datasets` or `$TFDS_DATA_DIR`), which may also
            hold a prepared `.npz` or CIFAR's python pickles; for
            `name="directory"`, the image folder: either class subfolders,
            or `train/` and `test/` folders that each have them.
        download: whether tensorflow-datasets may download and prepare a
            missing data set (needs internet, except `cars196` built from
            the manual download directory).
        batch_size: positive int; None gives the data set's default (128,
            or 64 for CUB and Cars).
        input_norm: "bn" (pixels in [0, 1]; the network's `InputBatchNorm`
            normalizes, the paper's proposal), "fixed" ((x - 128) / 128
            on 8-bit pixels as in the reference, range [-1, 0.992]; with
            L levels, (x - L/2) / (L/2)), "offline" (per-channel mean/std
            of the training split) or "none" (pixels in [0, 1]).
        flip: whether training uses random horizontal flips; None gives the
            data set's default (on, except digits).
        image_size: `(height, width)` images of a directory are resized to.
        size: the synthetic set's training images (default 50,000).

    Returns:
        A `DatasetSplits`.

    Raises:
        ValueError: an unknown name or a bad argument.
        DatasetUnavailableError: the data set is not on this machine and
            cannot be fetched; the message says how to get it.
    """
    spec, raw, batch_size, flip = prepare(
        name, data_dir, download, batch_size, input_norm, flip, image_size, size
    )
    return DatasetSplits(spec, raw, batch_size, input_norm, flip)
