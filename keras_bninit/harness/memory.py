"""The in-memory input path (`--input memory`): no TensorFlow, no host work.

For data that fits in memory (digits, CIFAR, synthetic, resized class
folders), the uint8 images of all three splits are held once in a
non-trainable Keras variable of an `ImagePipeline` layer, so on a GPU they
live on the device (CIFAR-10: 184 MB). What `model.fit` hands over per step
is a small int32 array with one row per example:

    (position in the image store, flip, crop top, crop left)

and the labels. The layer gathers the examples on the device, crops them
by a gather per axis and flips them (in `keras.ops`, inside the compiled step)
and applies the input normalization, so no per-step host work remains
beyond slicing those rows.

The rows of epoch `e` under run seed `s` are a pure function of `(s, e)`:
NumPy's PCG64 generator seeded with `[make_complex(s), e]` (the paper's MD5
seeds, Section 4.3) draws the epoch's order, then one flip bit and one crop
offset per position. They are the same on every Keras backend, and a run
resumed at epoch `k` sees what an uninterrupted run sees. They differ from
the tf.data path's draws (`harness.data`), so a run records its input path
and runs on the two paths are never paired.

`MemorySplits.training_model(model)` wraps a model taking images into one
taking those rows (the variables are shared, the images are not saved with
the weights); evaluation rows have no flip and the center crop.
"""

import keras
import numpy as np
from keras import ops

from keras_bninit._validation import non_negative_int
from keras_bninit.harness.checkpoints import DATA_ATTRIBUTE
from keras_bninit.harness.splits import EpochTracker, SplitArrays, prepare
from keras_bninit.seeding import make_complex

# Columns of a row.
POSITION, FLIP, TOP, LEFT = range(4)


class ImagePipeline(keras.layers.Layer):
    """Rows of (position, flip, top, left) -> normalized float32 images.

    The images are a non-trainable uint8 variable (on the accelerator where
    Keras places variables), which the layer does not save: a model's
    weights file holds the model, not its data.

    Args:
        images: uint8 array `[N, H, W, C]`, the image store.
        crop: `(height, width)` of the crop, or None for the whole image.
        flip: whether rows may ask for a horizontal flip.
        pixel_max: the largest pixel value (255; 16 for digits).
        input_norm: "bn", "none" (pixels in [0, 1]), "fixed" ((x - L/2) /
            (L/2) with L = pixel_max + 1 levels) or "offline" ((x - mean) /
            std, per channel, with `norm_mean`, `norm_std`).
    """

    def __init__(
        self,
        images,
        crop=None,
        flip=True,
        pixel_max=255.0,
        input_norm="bn",
        norm_mean=None,
        norm_std=None,
        **kwargs,
    ):
        super().__init__(dtype="float32", **kwargs)
        images = np.asarray(images, np.uint8)
        height, width = images.shape[1:3]
        self.crop = (height, width) if crop is None else tuple(crop)
        self.cropped = crop is not None
        self.flip = bool(flip)
        self.pixel_max = float(pixel_max)
        self.input_norm = input_norm
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.images = self.add_weight(
            shape=images.shape,
            dtype="uint8",
            trainable=False,
            initializer=lambda shape, dtype: images,
            name="images",
        )
        setattr(self.images, DATA_ATTRIBUTE, True)  # not in checkpoints
        self.built = True

    def call(self, rows):
        rows = ops.cast(rows, "int32")
        images = ops.take(self.images, rows[:, POSITION], axis=0)
        batch = ops.shape(images)[0]
        channels = images.shape[-1]
        height, width = self.crop
        if self.cropped:
            index = rows[:, TOP, None] + ops.arange(height, dtype="int32")
            index = ops.broadcast_to(
                index[:, :, None, None],
                (batch, height, images.shape[2], channels),
            )
            images = ops.take_along_axis(images, index, axis=1)
        if self.cropped:
            steps = ops.arange(width, dtype="int32")[None, :]
            index = ops.broadcast_to(
                (rows[:, LEFT, None] + steps)[:, None, :, None],
                (batch, height, width, channels),
            )
            images = ops.take_along_axis(images, index, axis=2)
        if self.flip:  # elementwise: cheaper than a gather on every device
            flipped = ops.reshape(rows[:, FLIP] > 0, (-1, 1, 1, 1))
            images = ops.where(flipped, ops.flip(images, axis=2), images)
        images = ops.cast(images, "float32")
        if self.input_norm == "fixed":
            half = (self.pixel_max + 1.0) / 2.0
            return (images - half) / half
        images = images / self.pixel_max
        if self.input_norm == "offline":
            mean = np.asarray(self.norm_mean, np.float32)
            std = np.asarray(self.norm_std, np.float32)
            images = (images - mean) / std
        return images

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.crop, self.images.shape[-1])

    # The image store is data, not state: nothing to save or load.
    def save_own_variables(self, store):
        del store

    def load_own_variables(self, store):
        del store


class _EpochRows(keras.utils.PyDataset):
    """The training rows of the epoch `tracker` reports, batch by batch."""

    def __init__(self, splits, seed, tracker):
        super().__init__(workers=1, use_multiprocessing=False)
        self.splits = splits
        self.seed = seed
        self.tracker = tracker
        self._epoch = None
        self._rows = self._labels = None

    def __len__(self):
        return self.splits.steps_per_epoch

    def __getitem__(self, index):
        epoch = self.tracker.current_epoch()
        if epoch != self._epoch:
            self._rows, self._labels = self.splits.epoch_rows(self.seed, epoch)
            self._epoch = epoch
        size = self.splits.batch_size
        part = slice(index * size, (index + 1) * size)
        return self._rows[part], self._labels[part]


class _Rows(keras.utils.PyDataset):
    """Fixed `(rows, labels)` in batches (evaluation)."""

    def __init__(self, rows, labels, batch_size):
        super().__init__(workers=1, use_multiprocessing=False)
        self.rows, self.labels, self.batch_size = rows, labels, batch_size

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.rows[part], self.labels[part]


class MemorySplits(SplitArrays):
    """A loaded data set and its in-memory input path.

    Build it with `load_memory_dataset`. The attributes are
    `harness.splits.SplitArrays`'; the training data for `model.fit` are
    rows for `training_model(model)`, see the module docstring.
    """

    input_path = "memory"

    def __init__(self, spec, raw, batch_size, input_norm, flip):
        super().__init__(spec, raw, batch_size, input_norm, flip)
        self._start = {
            "train": 0,
            "val": self.num_train,
            "test": self.num_train + self.num_val,
        }
        self._pipeline = None

    def pipeline(self):
        """The `ImagePipeline` holding all three splits (made once)."""
        if self._pipeline is None:
            images = np.concatenate(
                [self.arrays(s)[0] for s in ("train", "val", "test")]
            )
            self._pipeline = ImagePipeline(
                images,
                crop=self.crop,
                flip=self.flip,
                pixel_max=self.pixel_max,
                input_norm=self.input_norm,
                norm_mean=self.norm_mean,
                norm_std=self.norm_std,
                name="image_pipeline",
            )
        return self._pipeline

    def fit_model(self, model):
        """The model `fit` trains on this path: `training_model(model)`."""
        return self.training_model(model)

    def train_data(self, seed, epoch):
        """One epoch's training batches (`train_batches`)."""
        return self.train_batches(seed, epoch)

    def eval_data(self, split):
        """The batches of "train", "val" or "test" for evaluation (rows)."""
        return _Rows(*self.eval_rows(split), self.batch_size)

    def eval_inputs(self, split, steps_per_execution=1):
        """`(eval_data(split), None)`: rows start no pipeline (see
        `DatasetSplits.eval_inputs`)."""
        return self.eval_data(split), None

    def probe(self):
        """The diagnostics' probe data: validation rows and labels."""
        return self.eval_rows("val")

    def training_model(self, model):
        """`model` behind the image pipeline: rows in, `model`'s outputs.

        The returned model shares `model`'s variables; train, evaluate and
        checkpoint it, then save or export `model` itself.
        """
        rows = keras.Input((4,), dtype="int32", name="rows")
        return keras.Model(
            rows, model(self.pipeline()(rows)), name=f"{model.name}_memory"
        )

    def epoch_rows(self, seed, epoch):
        """The training rows and labels of one epoch, in training order.

        Args:
            seed: the run seed n (made complex by MD5, Section 4.3).
            epoch: the epoch number.

        Returns:
            `(rows, labels)`: int32 `[num_train, 4]` and int64 `[num_train]`.
        """
        seed = non_negative_int("seed", seed)
        epoch = non_negative_int("epoch", epoch)
        rng = np.random.Generator(np.random.PCG64([make_complex(seed), epoch]))
        n = self.num_train
        order = rng.permutation(n)
        rows = np.zeros((n, 4), np.int32)
        rows[:, POSITION] = order
        if self.flip:
            rows[:, FLIP] = rng.integers(0, 2, n)
        if self.crop is not None:
            height, width = self.stored_shape[:2]
            rows[:, TOP] = rng.integers(0, height - self.crop[0] + 1, n)
            rows[:, LEFT] = rng.integers(0, width - self.crop[1] + 1, n)
        return rows, self.arrays("train")[1][order]

    def train_batches(self, seed, epoch):
        """One epoch's `(rows, labels)` batches (e.g. for precise BN)."""
        rows, labels = self.epoch_rows(seed, epoch)
        for start in range(0, len(labels), self.batch_size):
            end = start + self.batch_size
            yield rows[start:end], labels[start:end]

    def fit_train_data(self, seed, tracker):
        """Training data for `model.fit` following Keras's epoch counter.

        A `keras.utils.PyDataset` of `steps_per_epoch` batches of rows;
        each epoch's come from `epoch_rows(seed, tracker.current_epoch())`.
        Pass `tracker` (an `EpochTracker`) among `fit`'s callbacks.
        """
        seed = non_negative_int("seed", seed)
        if not isinstance(tracker, EpochTracker):
            raise ValueError(
                "`tracker` must be a keras_bninit.harness.splits."
                f"EpochTracker. Received: tracker={tracker!r}"
            )
        return _EpochRows(self, seed, tracker)

    def fit_inputs(self, seed, tracker, epochs=None, steps_per_execution=1):
        """`(fit_train_data(seed, tracker), None)`: rows start no pipeline,
        so every epoch has its own (see `DatasetSplits.fit_inputs`)."""
        return self.fit_train_data(seed, tracker), None

    def eval_rows(self, split):
        """`(rows, labels)` of "train", "val" or "test" for evaluation:
        in a fixed order, no flip, the center crop."""
        labels = self.arrays(split)[1]
        rows = np.zeros((len(labels), 4), np.int32)
        rows[:, POSITION] = self._start[split] + np.arange(len(labels))
        rows[:, TOP], rows[:, LEFT] = self.center_offsets()
        return rows, labels


def load_memory_dataset(
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
    """Loads a data set for the in-memory input path.

    Takes the arguments of `harness.data.load_dataset` and gives the same
    splits (the same arrays and validation split) with the in-memory input
    path instead of tf.data. Needs no TensorFlow for digits, synthetic,
    CIFAR from its `.npz` or python pickles, and class folders.

    Returns:
        A `MemorySplits`.
    """
    spec, raw, batch_size, flip = prepare(
        name, data_dir, download, batch_size, input_norm, flip, image_size, size
    )
    return MemorySplits(spec, raw, batch_size, input_norm, flip)
