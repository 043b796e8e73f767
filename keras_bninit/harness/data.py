"""Data sets, the validation split and tf.data pipelines (Section 4.2).

Design, in the order the data flows:

1. A loader reads a data set once and keeps it in memory as uint8 arrays at
   the size the pipelines start from: 32x32 (CIFAR), 8x8x1 (digits), 256x256
   (CUB-200-2011, Stanford Cars: the paper resizes to 256x256 before any
   crop, so resizing once at load time loses nothing), or `image_size` (a
   directory). Holding the data in memory is the cache: nothing is decoded
   twice. CUB and Cars then take about 2.3 and 3.2 GB of RAM.
2. `validation_split` draws 10 % of the training set, stratified by class,
   with NumPy's generator seeded from `make_complex(0)`, as the reference
   does, so the split is the same for every run of a data set.
3. The training pipeline of epoch `e` under run seed `s` is a pure function
   of `(s, e)`: the example order is a stateless shuffle seeded from
   `(make_complex(s), e)`, and the random augmentation of each example is
   seeded from `(make_complex(s), e, example index)` with the
   `tf.image.stateless_random_*` ops. Nothing depends on global random state
   or on how many batches were drawn before, so a run resumed at epoch `k`
   sees exactly the data an uninterrupted run sees from epoch `k` on.
4. `model.fit` learns the epoch through `EpochTracker`: Keras calls
   `on_epoch_begin(epoch)` (with the restored epoch after
   `keras.callbacks.BackupAndRestore` resumed a run) before it creates that
   epoch's iterator, and `DatasetSplits.fit_train_dataset` reads the tracked
   epoch when an iterator is created. `train_epochs(seed, start, end)` is
   the explicit alternative: one finite stream of exactly
   `steps_per_epoch * (end - start)` batches.

Every epoch ends with its own (possibly partial) last batch, as PyTorch's
`DataLoader(drop_last=False)` in the reference. Evaluation pipelines have no
randomness. Pixels reach the network in [0, 1], then the selected input
normalization is applied (`bn` leaves it to the network's `InputBatchNorm`).
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import train_test_split

from keras_bninit._validation import non_negative_int, positive_int
from keras_bninit.seeding import make_complex

INPUT_NORMS = ("bn", "fixed", "offline", "none")
DIRECTORY = "directory"
# Data sets without a test split of their own (digits, a flat directory)
# hold out this stratified fraction as the test set, seeded like the
# validation split.
TEST_FRACTION = 0.2
_AUTOTUNE = tf.data.AUTOTUNE


class DatasetUnavailableError(RuntimeError):
    """A data set is not on this machine and cannot be fetched offline.

    The message says how to get it. The command-line interface turns this
    error into exit status 2.
    """


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one named data set is loaded and augmented (Section 4.2).

    Attributes:
        name: the name `load_dataset` accepts.
        batch_size: default batch size (128 CIFAR, 64 CUB/Cars and digits).
        flip: whether training applies a random horizontal flip.
        resize: `(height, width)` every image is resized to at load time, or
            None to keep the stored size (which must then be fixed).
        crop: `(height, width)` of the random crop for training and of the
            center crop for evaluation, or None for no crop.
        tfds_name: the tensorflow-datasets name, or None.
        how_to_get: what to do when the data set is not on this machine; a
            template with the field `data_dir`.
    """

    name: str
    batch_size: int
    flip: bool
    resize: tuple | None = None
    crop: tuple | None = None
    tfds_name: str | None = None
    how_to_get: str = ""


def _tfds_how_to_get(name):
    return (
        f"Download it once, with internet access, by "
        f"`keras_bninit.harness.data.load_dataset({name!r}, "
        f"data_dir={{data_dir!r}}, download=True)` or "
        f"`tfds build {name} --data_dir {{data_dir}}`; later runs read it "
        f"offline from the same data_dir."
    )


_CARS_HOW_TO_GET = (
    "Stanford Cars' public download has been offline for years, so "
    "tensorflow-datasets cannot fetch it. Get the four original files "
    "cars_train.tgz, cars_test.tgz, car_devkit.tgz and "
    "cars_test_annos_withlabels.mat (e.g. from a mirror of the original "
    "release), put them in {data_dir}/downloads/manual/, then run "
    "`keras_bninit.harness.data.load_dataset('cars196', data_dir={data_dir!r}, "
    "download=True)` once; tensorflow-datasets builds the data set from "
    "those files without internet access."
)

# The paper's protocol (Section 4.2): CIFAR: batch 128, flip only;
# CUB/Cars: batch 64, resize to 256x256, random crop 224x224, flip.
_SMALL = {"batch_size": 128}
_LARGE = {"batch_size": 64, "resize": (256, 256), "crop": (224, 224)}


def _tfds_spec(name, sizes, how_to_get=None):
    return DatasetSpec(
        name,
        flip=True,
        tfds_name=name,
        how_to_get=how_to_get or _tfds_how_to_get(name),
        **sizes,
    )


DATASETS = {
    spec.name: spec
    for spec in (
        _tfds_spec("cifar10", _SMALL),
        _tfds_spec("cifar100", _SMALL),
        _tfds_spec("caltech_birds2011", _LARGE),
        _tfds_spec("cars196", _LARGE, how_to_get=_CARS_HOW_TO_GET),
        # A mirrored digit is often no longer a well-formed digit (2, 3, 4,
        # 7, 9), so digits train without the flip unless `flip=True`.
        # Batch 64: 1293 training images give 21 steps per epoch, so a
        # 3-epoch smoke run takes 63 optimizer steps instead of 33.
        DatasetSpec("digits", batch_size=64, flip=False),
        DatasetSpec(DIRECTORY, batch_size=128, flip=True),
    )
}
"""The registry: data set name -> `DatasetSpec`. Configuration is data."""


def available_datasets():
    """Names `load_dataset` accepts, sorted.

    Besides these, `load_dataset` accepts the path of a directory of class
    subfolders.
    """
    return tuple(sorted(DATASETS))


# ---------------------------------------------------------------------------
# The validation split
# ---------------------------------------------------------------------------


def validation_split(labels, fraction=0.1, seed=0):
    """Splits example indices into training and held-out parts, stratified.

    This is the reference's draw (Section 4.2): scikit-learn's
    `train_test_split(np.arange(n), test_size=fraction, stratify=labels)`
    with NumPy's generator seeded from `make_complex(seed)`. It touches no
    global random state and gives the same indices on every call.

    Args:
        labels: 1-D array of integer class labels of the examples to split.
        fraction: held-out fraction in (0, 1); 0.1 in the paper.
        seed: non-negative integer, made complex by MD5; 0 in the paper,
            the same for every run.

    Returns:
        `(train_indices, held_out_indices)`: disjoint int64 arrays covering
        `range(len(labels))`, in the order scikit-learn returns them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(
            f"`labels` must be 1-D. Received: labels.shape={labels.shape}"
        )
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"`fraction` must be in (0, 1). Received: fraction={fraction}"
        )
    seed = non_negative_int("seed", seed)
    classes, counts = np.unique(labels, return_counts=True)
    n_held_out = int(np.ceil(fraction * len(labels)))
    if counts.size and (counts.min() < 2 or n_held_out < classes.size):
        raise ValueError(
            "A stratified split needs at least 2 examples per class and at "
            "least one held-out example per class. Received: "
            f"{len(labels)} examples, {classes.size} classes, smallest "
            f"class {counts.min()}, fraction={fraction}"
        )
    indices = np.arange(len(labels), dtype=np.int64)
    rng = np.random.RandomState(make_complex(seed))
    train, held_out = train_test_split(
        indices, test_size=fraction, stratify=labels, random_state=rng
    )
    return train, held_out


# ---------------------------------------------------------------------------
# Loaders: each returns uint8 images [N, H, W, C] at their stored size
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Raw:
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple
    pixel_max: float = 255.0


def _to_uint8(images, size=None):
    """Resizes (bilinear, antialiased like PIL) and rounds to uint8."""
    images = tf.convert_to_tensor(images)
    if size is not None:
        images = tf.image.resize(
            images, size, method="bilinear", antialias=True
        )
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)


def _collect(dataset):
    """Gathers an (image, label) dataset into two NumPy arrays."""
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(512):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not images:
        raise DatasetUnavailableError("The data set has no examples.")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _load_digits(spec, data_dir, download, image_size):
    from sklearn.datasets import load_digits

    del spec, data_dir, download, image_size
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # values 0..16
    labels = digits.target.astype(np.int64)
    names = tuple(str(n) for n in digits.target_names)
    return _Raw(images, labels, None, None, names, pixel_max=16.0)


def _load_tfds(spec, data_dir, download, image_size):
    import tensorflow_datasets as tfds

    del image_size
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    how_to_get = spec.how_to_get.format(data_dir=str(builder.data_dir_root))
    if download:
        try:
            builder.download_and_prepare()
        except Exception as error:  # network, checksum or manual-dir errors
            raise DatasetUnavailableError(
                f"Could not download or build {spec.name!r} into "
                f"{builder.data_dir}: {error}\n{how_to_get}"
            ) from error
    arrays = []
    for split in ("train", "test"):
        try:
            dataset = builder.as_dataset(
                split=split, as_supervised=True, shuffle_files=False
            )
        except AssertionError as error:  # tfds: "could not find data"
            raise DatasetUnavailableError(
                f"Data set {spec.name!r} is not prepared in "
                f"{builder.data_dir} and cannot be loaded offline. "
                f"{how_to_get}"
            ) from error
        if spec.resize is not None:
            dataset = dataset.map(
                lambda x, y: (_to_uint8(x, spec.resize), y),
                num_parallel_calls=_AUTOTUNE,
            )
        arrays.extend(_collect(dataset))
    label = builder.info.features["label"]
    return _Raw(*arrays, class_names=tuple(label.names))


def _directory_split(path, image_size, class_names=None):
    dataset = keras.utils.image_dataset_from_directory(
        path,
        labels="inferred",
        label_mode="int",
        class_names=class_names,
        color_mode="rgb",
        batch_size=None,
        image_size=image_size,
        shuffle=False,
        verbose=False,
    )
    names = tuple(dataset.class_names)
    images, labels = _collect(dataset.map(lambda x, y: (_to_uint8(x), y)))
    return images, labels, names


def _load_directory(spec, data_dir, download, image_size):
    del spec, download
    if data_dir is None or not os.path.isdir(data_dir):
        raise DatasetUnavailableError(
            "A directory data set needs `data_dir`: a folder with one "
            "subfolder of images per class (or `train/` and `test/` "
            f"folders that each have them). Received: data_dir={data_dir!r}"
        )
    train_dir = os.path.join(data_dir, "train")
    test_dir = os.path.join(data_dir, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        images, labels, names = _directory_split(train_dir, image_size)
        test_images, test_labels, _ = _directory_split(
            test_dir, image_size, class_names=list(names)
        )
        return _Raw(images, labels, test_images, test_labels, names)
    images, labels, names = _directory_split(data_dir, image_size)
    return _Raw(images, labels, None, None, names)


_LOADERS = {"digits": _load_digits, DIRECTORY: _load_directory}


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


class EpochTracker(keras.callbacks.Callback):
    """Tells `DatasetSplits.fit_train_dataset` which epoch Keras runs.

    Keras calls `on_epoch_begin(epoch)` before it creates the epoch's
    data iterator, also for the first epoch after
    `keras.callbacks.BackupAndRestore` or `initial_epoch` moved the
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


def _seed_pair(seed):
    return tf.constant([make_complex(seed), 0], dtype=tf.int64)


class DatasetSplits:
    """A loaded data set: train/val/test arrays, metadata and pipelines.

    Build it with `load_dataset`. Images are held as uint8; every pipeline
    yields `(images, labels)` batches of float32 images (input normalization
    applied) and int64 labels.

    Attributes:
        name, num_classes, class_names, input_shape, batch_size, input_norm,
        flip, crop: what `load_dataset` chose (see there).
        num_train, num_val, num_test: examples per split, counted.
        steps_per_epoch: `ceil(num_train / batch_size)`.
        train_indices, val_indices: positions in the original training set
            (the output of `validation_split`); used as example ids.
        norm_mean, norm_std: per-channel statistics of the training split
            in [0, 1] pixels (`input_norm="offline"`), else None.
    """

    def __init__(self, spec, raw, batch_size, input_norm, flip):
        self.name = spec.name
        self.class_names = raw.class_names
        self.num_classes = len(raw.class_names)
        self.batch_size = batch_size
        self.input_norm = input_norm
        self.flip = flip
        train_indices, val_indices = validation_split(raw.train_labels)
        self.train_indices = train_indices
        self.val_indices = val_indices
        self._pixel_max = raw.pixel_max
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
        self.norm_mean = self.norm_std = None
        if input_norm == "offline":
            self.norm_mean, self.norm_std = self._channel_stats()
        self._train_tensors = None

    # -- metadata -----------------------------------------------------------

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
            "flip": self.flip,
            "crop": None if self.crop is None else list(self.crop),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
        }

    # -- per-example transforms ---------------------------------------------

    def _channel_stats(self):
        """Per-channel mean and std of the training split in [0, 1]."""
        images = self._train[0]
        channels = images.shape[-1]
        total = np.zeros(channels)
        total_sq = np.zeros(channels)
        for start in range(0, len(images), 1024):
            chunk = images[start : start + 1024].astype(np.float64)
            chunk = chunk.reshape(-1, channels) / self._pixel_max
            total += chunk.sum(axis=0)
            total_sq += np.square(chunk).sum(axis=0)
        count = images.size / channels
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
        std[std == 0] = 1.0  # a constant channel is only centered
        return [float(m) for m in mean], [float(s) for s in std]

    def _finish(self, image):
        """uint8 -> float32 in [0, 1] -> the selected input normalization."""
        if self.input_norm == "fixed":
            # The reference's (x - 128) / 128 on 8-bit pixels: half the
            # number of levels (256 / 2), here (pixel_max + 1) / 2.
            half = (self._pixel_max + 1.0) / 2.0
            return (tf.cast(image, tf.float32) - half) / half
        image = tf.cast(image, tf.float32) / self._pixel_max
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
        height, width = image.shape[0], image.shape[1]
        top = int(round((height - self.crop[0]) / 2.0))
        left = int(round((width - self.crop[1]) / 2.0))
        return image[top : top + self.crop[0], left : left + self.crop[1]]

    # -- pipelines ----------------------------------------------------------

    @staticmethod
    def _options(dataset):
        options = tf.data.Options()
        options.deterministic = True
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
        dataset = dataset.map(example, num_parallel_calls=_AUTOTUNE)
        return dataset.batch(self.batch_size)

    def _stream(self, seed, epochs, num_epochs):
        seed_pair = _seed_pair(seed)
        if self._train_tensors is None:  # made eagerly, once, then captured
            self._train_tensors = (
                tf.constant(self._train[0]),
                tf.constant(self._train[1]),
                tf.constant(self.train_indices),
            )
        dataset = epochs.flat_map(lambda e: self._epoch_batches(seed_pair, e))
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
                      callbacks=[tracker, keras.callbacks.BackupAndRestore(d)])

        A resumed run then trains on the same data as an uninterrupted one.

        Args:
            seed: non-negative integer run seed.
            tracker: an `EpochTracker` that is among `fit`'s callbacks.

        Returns:
            A `tf.data.Dataset` of `steps_per_epoch` batches per iterator.
        """
        seed = non_negative_int("seed", seed)
        if not isinstance(tracker, EpochTracker):
            raise ValueError(
                "`tracker` must be a keras_bninit.harness.data.EpochTracker. "
                f"Received: tracker={tracker!r}"
            )

        def current_epoch():
            yield tracker.current_epoch()

        epochs = tf.data.Dataset.from_generator(
            current_epoch, output_signature=tf.TensorSpec((), tf.int64)
        )
        return self._stream(seed, epochs, 1)

    def _eval_dataset(self, images, labels):
        def example(image, label):
            return self._finish(self._center_crop(image)), label

        dataset = tf.data.Dataset.from_tensor_slices((images, labels))
        dataset = dataset.map(example, num_parallel_calls=_AUTOTUNE)
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


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def ensure_available(name, data_dir=None):
    """Checks, without reading images, that `load_dataset` can work offline.

    A tensorflow-datasets data set must be prepared in `data_dir`
    (its `dataset_info.json` exists); digits always is; a directory is
    checked when it is loaded.

    Raises:
        ValueError: an unknown name.
        DatasetUnavailableError: the data set is not on this machine; the
            message says how to get it.
    """
    spec, data_dir = _resolve_name(name, data_dir)
    if spec.tfds_name is None:
        return
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    info = os.path.join(str(builder.data_dir), "dataset_info.json")
    if not tf.io.gfile.exists(info):
        how_to_get = spec.how_to_get.format(data_dir=str(builder.data_dir_root))
        raise DatasetUnavailableError(
            f"Data set {spec.name!r} is not prepared in {builder.data_dir} "
            f"and cannot be loaded offline. {how_to_get}"
        )


def _resolve_name(name, data_dir):
    """Returns `(spec, data_dir)`; a directory path selects `directory`."""
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a string. Received: name={name!r}")
    if name in DATASETS:
        return DATASETS[name], data_dir
    if os.path.isdir(name):
        return DATASETS[DIRECTORY], name
    raise ValueError(
        f"Unknown data set {name!r}. Valid names: "
        f"{', '.join(available_datasets())}, or the path of a directory of "
        "class subfolders."
    )


def load_dataset(
    name,
    data_dir=None,
    *,
    download=False,
    batch_size=None,
    input_norm="bn",
    flip=None,
    image_size=(32, 32),
):
    """Loads a data set into memory and returns its splits and pipelines.

    The training set is split into training and validation (10 %,
    stratified, seed `make_complex(0)`: `validation_split`). Data sets
    without a test split (digits, a directory without `train/` and `test/`)
    first hold out a stratified `TEST_FRACTION` (20 %) as test set, drawn the
    same way. Section 4.2.

    Args:
        name: one of `available_datasets()` ("digits" needs no download and
            is the offline default), or the path of a directory of class
            subfolders.
        data_dir: tensorflow-datasets' data directory (None: its default,
            `~/tensorflow_datasets` or `$TFDS_DATA_DIR`); for
            `name="directory"`, the image folder: either class subfolders,
            or `train/` and `test/` each holding class subfolders.
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

    Returns:
        A `DatasetSplits`.

    Raises:
        ValueError: an unknown name or a bad argument.
        DatasetUnavailableError: the data set is not on this machine and
            cannot be fetched; the message says how to get it.
    """
    spec, data_dir = _resolve_name(name, data_dir)
    if input_norm not in INPUT_NORMS:
        raise ValueError(
            f"`input_norm` must be one of {', '.join(INPUT_NORMS)}. "
            f"Received: input_norm={input_norm!r}"
        )
    if batch_size is None:
        batch_size = spec.batch_size
    positive_int("batch_size", batch_size)
    flip = spec.flip if flip is None else bool(flip)
    image_size = tuple(int(s) for s in image_size)

    loader = _LOADERS.get(spec.name, _load_tfds)
    raw = loader(spec, data_dir, download, image_size)
    if raw.test_images is None:
        rest, test = validation_split(raw.train_labels, TEST_FRACTION)
        raw = dataclasses.replace(
            raw,
            train_images=raw.train_images[rest],
            train_labels=raw.train_labels[rest],
            test_images=raw.train_images[test],
            test_labels=raw.train_labels[test],
        )
    return DatasetSplits(spec, raw, batch_size, input_norm, flip)
