"""The splits of a loaded data set, shared by both input paths (Section 4.2).

`SplitArrays` holds a data set's training, validation and test arrays
(the validation split of `harness.datasets.validation_split`) and what the
pipelines need to know of them; `prepare` checks the arguments both input
paths take and loads the arrays; `EpochTracker` tells the training data
which epoch Keras runs. Like `harness.datasets`, this module does not
import TensorFlow.
"""

import keras
import numpy as np

from keras_bninit._validation import non_negative_int, positive_int
from keras_bninit.harness.datasets import (
    INPUT_NORMS,
    load_raw,
    resolve_name,
    validation_split,
)


class SplitArrays:
    """Training, validation and test arrays of one data set, and metadata.

    The base of both input paths (`harness.data.DatasetSplits`,
    `harness.memory.MemorySplits`); it holds the uint8 images once.

    Attributes:
        name, num_classes, class_names, input_shape, batch_size, input_norm,
        flip, crop: the data set and what the caller chose.
        num_train, num_val, num_test: examples per split, counted.
        steps_per_epoch: `ceil(num_train / batch_size)`.
        train_indices, val_indices: positions in the original training set
            (the output of `validation_split`); used as example ids.
        norm_mean, norm_std: per-channel statistics of the training split
            in [0, 1] pixels (`input_norm="offline"`), else None.
        pixel_max: the largest pixel value (255; 16 for digits).
    """

    input_path = None  # "tfdata" or "memory", set by the subclasses

    def __init__(self, spec, raw, batch_size, input_norm, flip):
        self.name = spec.name
        self.class_names = raw.class_names
        self.num_classes = len(raw.class_names)
        self.batch_size = batch_size
        self.input_norm = input_norm
        self.flip = flip
        self.source = raw.source
        train_indices, val_indices = validation_split(raw.train_labels)
        self.train_indices = train_indices
        self.val_indices = val_indices
        self.pixel_max = raw.pixel_max
        self._train = (
            raw.train_images[train_indices],
            raw.train_labels[train_indices],
        )
        self._val = (
            raw.train_images[val_indices],
            raw.train_labels[val_indices],
        )
        self._test = (raw.test_images, raw.test_labels)
        stored = raw.train_images.shape[1:]
        self.crop = spec.crop
        if spec.crop is None:
            self.input_shape = tuple(int(d) for d in stored)
        else:
            self.input_shape = (*spec.crop, int(stored[-1]))
        self.stored_shape = tuple(int(d) for d in stored)
        self.norm_mean = self.norm_std = None
        if input_norm == "offline":
            self.norm_mean, self.norm_std = self._channel_stats()

    @property
    def num_train(self):
        return len(self._train[1])

    @property
    def num_val(self):
        return len(self._val[1])

    @property
    def num_test(self):
        return len(self._test[1])

    @property
    def steps_per_epoch(self):
        return -(-self.num_train // self.batch_size)

    def arrays(self, split):
        """`(uint8 images, int64 labels)` of "train", "val" or "test"."""
        splits = {"train": self._train, "val": self._val, "test": self._test}
        if split not in splits:
            raise ValueError(
                f"Unknown split {split!r}. Valid: {', '.join(splits)}"
            )
        return splits[split]

    def describe(self):
        """Metadata as a JSON-ready dict, for a run's result record."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "batch_size": self.batch_size,
            "num_train": self.num_train,
            "num_val": self.num_val,
            "num_test": self.num_test,
            "steps_per_epoch": self.steps_per_epoch,
            "input_norm": self.input_norm,
            "input": self.input_path,
            "flip": self.flip,
            "crop": None if self.crop is None else list(self.crop),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            "source": self.source,
        }

    def _channel_stats(self):
        """Per-channel mean and std of the training split in [0, 1]."""
        images = self._train[0]
        channels = images.shape[-1]
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        for start in range(0, len(images), 1024):
            chunk = images[start : start + 1024].astype(np.float64)
            chunk = chunk.reshape(-1, channels) / self.pixel_max
            total += chunk.sum(axis=0)
            total_sq += np.square(chunk).sum(axis=0)
        count = images.size / channels
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        std[std == 0] = 1.0  # a constant channel is only centered
        return [float(m) for m in mean], [float(s) for s in std]

    def center_offsets(self):
        """`(top, left)` of the evaluation center crop (0, 0 without crop)."""
        if self.crop is None:
            return 0, 0
        height, width = self.stored_shape[:2]
        top = int(round((height - self.crop[0]) / 2.0))
        left = int(round((width - self.crop[1]) / 2.0))
        return top, left


def prepare(
    name, data_dir, download, batch_size, input_norm, flip, image_size, size
):
    """`load_raw` with both input paths' argument checks and defaults;
    the arguments are checked before anything is read.

    Returns:
        `(spec, raw, batch_size, flip)`.
    """
    spec, _ = resolve_name(name, data_dir)
    if input_norm not in INPUT_NORMS:
        raise ValueError(
            f"`input_norm` must be one of {', '.join(INPUT_NORMS)}. "
            f"Received: input_norm={input_norm!r}"
        )
    if batch_size is None:
        batch_size = spec.batch_size
    batch_size = positive_int("batch_size", batch_size)
    flip = spec.flip if flip is None else bool(flip)
    spec, raw = load_raw(name, data_dir, download, image_size, size)
    return spec, raw, batch_size, flip


class EpochTracker(keras.callbacks.Callback):
    """Tells `DatasetSplits.fit_train_dataset` which epoch Keras runs.

    Keras calls `on_epoch_begin(epoch)` before it creates the epoch's
    data iterator, also for the first epoch after a checkpoint
    (`harness.checkpoints.RunState`) or `initial_epoch` moved the
    start, so the data of every epoch is the one `train_dataset(seed,
    epoch)` gives, however the run got there.

    Args:
        initial_epoch: the epoch reported before `fit` begins an epoch
            (Keras draws one batch early to build the model; that batch
            is discarded).
    """

    def __init__(self, initial_epoch=0):
        super().__init__()
        self.initial_epoch = non_negative_int("initial_epoch", initial_epoch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)

    def current_epoch(self):
        """The epoch being trained (`initial_epoch` before any)."""
        return self.initial_epoch if self.epoch is None else self.epoch
