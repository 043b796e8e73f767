"""Data sets as uint8 arrays in memory, and their splits (Section 4.2).

This module does not import TensorFlow: it is what both
input paths start from, the tf.data pipelines (`harness.data`) and the
in-memory path (`harness.memory`), and it works where TensorFlow is not
installed.

1. A loader reads a data set once and keeps it in memory as uint8 arrays at
   the size the pipelines start from: 32x32 (CIFAR, synthetic), 8x8x1
   (digits), 256x256 (CUB-200-2011, Stanford Cars: the paper resizes to
   256x256 before any crop, so resizing once at load time loses nothing),
   or `image_size` (a directory of class folders). Where they come from:
   - digits: scikit-learn's bundled copy;
   - CIFAR-10/100: a prepared `.npz` (written once by this module from
     tensorflow-datasets where TensorFlow is installed), or the original
     CIFAR python pickles (`cifar-10-batches-py/`, `cifar-100-python/`) in
     `data_dir`, or tensorflow-datasets;
   - CUB, Cars: tensorflow-datasets, then the same `.npz` cache;
   - a class-folder directory: checked, decoded and resized with Pillow,
     cached as `.npz` under `~/.cache/keras_bninit` (`image_folders`);
   - synthetic: CIFAR-shaped random images with fixed labels, for timing.
2. `validation_split` draws 10 % of the training set, stratified by class,
   with NumPy's generator seeded from `make_complex(0)`, as the reference
   does, so the split is the same for every run of a data set.
"""

import dataclasses
import os

import numpy as np
from sklearn.model_selection import train_test_split

from keras_bninit._validation import non_negative_int, positive_int
from keras_bninit.harness import _tf
from keras_bninit.harness.bounds import BadInputError
from keras_bninit.harness.config import (  # noqa: F401  (public here too)
    DATASET_DEFAULTS,
    DIRECTORY,
    INPUT_NORMS,
    SYNTHETIC_SIZE,
    TEST_FRACTION,
    VALIDATION_FRACTION,
)
from keras_bninit.seeding import make_complex

SYNTHETIC = "synthetic"
CACHE_VERSION = 1


class BadDataError(BadInputError):
    """A data file is malformed or hostile: bad input, not a missing set.

    The message names the file or class. The command-line interface turns
    this error into exit status 2 before anything is written; a sweep
    raises it without storing the run as failed.
    """


class DatasetUnavailableError(RuntimeError):
    """A data set is not on this machine and cannot be fetched offline.

    The message says how to get it. The command-line interface turns this
    error into exit status 2.
    """


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How one named data set is loaded and augmented (Section 4.2).

    Attributes:
        name: the name `load_raw` accepts.
        batch_size: default batch size (128 CIFAR, 64 CUB/Cars and digits:
            `config.DATASET_DEFAULTS`).
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
    flip: bool
    resize: tuple | None = None
    crop: tuple | None = None
    tfds_name: str | None = None
    how_to_get: str = ""

    @property
    def batch_size(self):
        return DATASET_DEFAULTS[self.name]["batch"]


def _tfds_how_to_get(name):
    return (
        f"Download it once, with internet access, by "
        f"`keras_bninit.harness.data.load_dataset({name!r}, "
        f"data_dir={{data_dir!r}}, download=True)` or "
        f"`tfds build {name} --data_dir {{data_dir}}`; later runs read it "
        f"offline from the same data_dir."
    )


_CIFAR_PICKLES = {
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
}


def _cifar_how_to_get(name):
    return _tfds_how_to_get(name) + (
        f" Without TensorFlow: put the original CIFAR python version "
        f"({_CIFAR_PICKLES[name]}/, from the CIFAR web page) in "
        "{data_dir} (--data-dir)."
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
_SMALL = {}
_LARGE = {"resize": (256, 256), "crop": (224, 224)}


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
        _tfds_spec("cifar10", _SMALL, _cifar_how_to_get("cifar10")),
        _tfds_spec("cifar100", _SMALL, _cifar_how_to_get("cifar100")),
        _tfds_spec("caltech_birds2011", _LARGE),
        _tfds_spec("cars196", _LARGE, how_to_get=_CARS_HOW_TO_GET),
        # A mirrored digit is often no longer a well-formed digit (2, 3, 4,
        # 7, 9), so digits train without the flip unless `flip=True`.
        # Batch 64: 1293 training images give 21 steps per epoch, so a
        # 3-epoch smoke run takes 63 optimizer steps instead of 33.
        DatasetSpec("digits", flip=False),
        DatasetSpec(DIRECTORY, flip=True),
        # CIFAR-shaped random images for timing the harness end to end.
        DatasetSpec(SYNTHETIC, flip=True),
    )
}
"""The registry: data set name -> `DatasetSpec`. Configuration is data."""


def available_datasets():
    """Names `load_raw` accepts, sorted.

    Besides these, `load_raw` accepts the path of a directory of class
    subfolders.
    """
    return tuple(sorted(DATASETS))


# ---------------------------------------------------------------------------
# The validation split
# ---------------------------------------------------------------------------


def validation_split(labels, fraction=VALIDATION_FRACTION, seed=0):
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
class RawData:
    """A data set as loaded: uint8 images, int64 labels, class names.

    `test_images`/`test_labels` are None for a data set without a test
    split; `pixel_max` is the largest pixel value (255, or 16 for digits).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray | None
    test_labels: np.ndarray | None
    class_names: tuple
    pixel_max: float = 255.0
    source: str = ""


def _load_digits(spec, data_dir, download, image_size, size):
    from sklearn.datasets import load_digits

    del spec, data_dir, download, image_size, size
    digits = load_digits()
    images = digits.images.astype(np.uint8)[..., None]  # values 0..16
    labels = digits.target.astype(np.int64)
    names = tuple(str(n) for n in digits.target_names)
    return RawData(
        images, labels, None, None, names, pixel_max=16.0, source="sklearn"
    )


def _load_synthetic(spec, data_dir, download, image_size, size):
    """CIFAR-shaped random uint8 images with fixed labels (class i % 10).

    The pixels come from NumPy's generator seeded from `make_complex(0)`:
    the same set on every machine and backend. Nothing in it can be learned;
    it exists to time the harness without a download.
    """
    del spec, data_dir, download, image_size
    size = SYNTHETIC_SIZE if size is None else positive_int("size", size)
    test_size = max(size // 5, 10)
    rng = np.random.default_rng(make_complex(0))
    images = rng.integers(0, 256, (size + test_size, 32, 32, 3), np.uint8)
    labels = np.arange(size + test_size, dtype=np.int64) % 10
    return RawData(
        images[:size],
        labels[:size],
        images[size:],
        labels[size:],
        tuple(str(i) for i in range(10)),
        source="synthetic",
    )


def cache_path(name, data_dir):
    """Where the prepared `.npz` of a named data set lives in `data_dir`."""
    return os.path.join(data_dir, f"keras_bninit-{name}-v{CACHE_VERSION}.npz")


def save_cache(path, raw):
    """Writes `raw` as an uncompressed `.npz`, atomically (rename)."""
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        np.savez(
            tmp,
            train_images=raw.train_images,
            train_labels=raw.train_labels,
            test_images=np.zeros((0,), np.uint8)
            if raw.test_images is None
            else raw.test_images,
            test_labels=np.zeros((0,), np.int64)
            if raw.test_labels is None
            else raw.test_labels,
            class_names=np.asarray(raw.class_names, dtype=str),
            pixel_max=np.float64(raw.pixel_max),
        )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_cache(path):
    """A `RawData` from a `.npz` written by `save_cache`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            test_images = f["test_images"]
            has_test = test_images.ndim == 4
            return RawData(
                f["train_images"].astype(np.uint8, copy=False),
                f["train_labels"].astype(np.int64, copy=False),
                test_images if has_test else None,
                f["test_labels"].astype(np.int64) if has_test else None,
                tuple(str(n) for n in f["class_names"]),
                float(f["pixel_max"]),
                source=f"cache:{path}",
            )
    except (OSError, KeyError, ValueError) as error:
        raise DatasetUnavailableError(
            f"The prepared data set {path} is unreadable "
            f"({type(error).__name__}: {error}); delete it to prepare it "
            "again."
        ) from error


def _tfds_data_dir(data_dir):
    if data_dir is not None:
        return data_dir
    return os.environ.get(
        "TFDS_DATA_DIR",
        os.path.join(os.path.expanduser("~"), "tensorflow_datasets"),
    )


def _tensorflow_missing():
    return not all(
        _tf.available(m) for m in ("tensorflow", "tensorflow_datasets")
    )


def _load_named(spec, data_dir, download, image_size, size):
    """CIFAR, CUB, Cars: cache, then pickles (CIFAR), then tfds (+cache)."""
    del image_size, size
    root = _tfds_data_dir(data_dir)
    cache = cache_path(spec.name, root)
    if os.path.isfile(cache):
        return load_cache(cache)
    if spec.name in _CIFAR_PICKLES:
        from keras_bninit.harness import cifar_pickles  # imports this module

        folder = cifar_pickles.find(spec.name, data_dir)
        if folder is not None:
            raw = cifar_pickles.load(spec.name, folder)
            _save_cache_quietly(cache, raw)
            return raw
    if _tensorflow_missing():
        raise DatasetUnavailableError(
            f"Data set {spec.name!r} is not prepared in {root} "
            f"({os.path.basename(cache)}) and TensorFlow, which reads "
            "tensorflow-datasets, is not installed. "
            + spec.how_to_get.format(data_dir=root)
        )
    from keras_bninit.harness import tfds_source  # TensorFlow, GPUs hidden

    try:
        arrays = tfds_source.load(
            spec.tfds_name, data_dir, download, spec.resize
        )
    except tfds_source.NotPrepared as error:
        raise DatasetUnavailableError(
            f"{error} {spec.how_to_get.format(data_dir=root)}"
        ) from error
    raw = RawData(*arrays, source=f"tfds:{spec.tfds_name}")
    _save_cache_quietly(cache, raw)
    return raw


def _save_cache_quietly(cache, raw):
    """The prepared arrays, for later runs with or without TensorFlow; a
    read-only or full data folder reads the original files each time."""
    try:
        save_cache(cache, raw)
    except OSError:
        pass


def _load_directory(spec, data_dir, download, image_size, size):
    from keras_bninit.harness import image_folders  # imports this module

    del spec, download, size
    return image_folders.load(data_dir, image_size)


_LOADERS = {
    "digits": _load_digits,
    DIRECTORY: _load_directory,
    SYNTHETIC: _load_synthetic,
}


def resolve_name(name, data_dir):
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


def load_raw(
    name, data_dir=None, download=False, image_size=(32, 32), size=None
):
    """Loads a data set as uint8 arrays, test split held out where needed.

    Data sets without a test split (digits, a directory without `train/`
    and `test/`) hold out a stratified `TEST_FRACTION` (20 %) as test set,
    drawn like the validation split.

    Args:
        name: a name of `available_datasets()` or a class-folder path.
        data_dir: where the data set is (see the module docstring).
        download: whether tensorflow-datasets may download a missing set.
        image_size: `(height, width)` of a directory's images.
        size: the synthetic set's number of training images (before the
            validation split); only for "synthetic".

    Returns:
        `(spec, raw)`: the `DatasetSpec` and a `RawData` with test arrays.
    """
    spec, data_dir = resolve_name(name, data_dir)
    if size is not None and spec.name != SYNTHETIC:
        raise ValueError(
            f"`size` is for the synthetic data set only. Received: "
            f"size={size!r} for {spec.name!r}"
        )
    image_size = tuple(int(s) for s in image_size)
    loader = _LOADERS.get(spec.name, _load_named)
    raw = loader(spec, data_dir, download, image_size, size)
    if raw.test_images is None:
        rest, test = validation_split(raw.train_labels, TEST_FRACTION)
        raw = dataclasses.replace(
            raw,
            train_images=raw.train_images[rest],
            train_labels=raw.train_labels[rest],
            test_images=raw.train_images[test],
            test_labels=raw.train_labels[test],
        )
    return spec, raw


def ensure_available(name, data_dir=None, image_size=(32, 32)):
    """Checks that a data set loads offline, before a run writes anything.

    A named tensorflow-datasets set must be prepared (its `.npz` cache, the
    CIFAR pickles, which are read here with the restricted unpickler and
    then cached as `.npz`, or tensorflow-datasets' `dataset_info.json`);
    digits and synthetic always are; a directory of class folders is
    listed and decoded at `image_size` (`image_folders`), which caches the
    images for the run.

    Raises:
        ValueError: an unknown name; `BadDataError` (a ValueError): a CIFAR
            python file that is malformed or names anything but arrays, a
            directory's file that is no regular file or no image, or a
            class with too few images for the splits.
        DatasetUnavailableError: the data set is not on this machine; the
            message says how to get it.
    """
    spec, data_dir = resolve_name(name, data_dir)
    if spec.name == DIRECTORY:
        _load_directory(spec, data_dir, False, tuple(image_size), None)
        return
    if spec.tfds_name is None:
        return
    root = _tfds_data_dir(data_dir)
    if os.path.isfile(cache_path(spec.name, root)):
        return
    folder = None
    if spec.name in _CIFAR_PICKLES:
        from keras_bninit.harness import cifar_pickles

        folder = cifar_pickles.find(spec.name, data_dir)
    if folder:
        _load_named(spec, data_dir, False, None, None)  # BadDataError
        return
    how_to_get = spec.how_to_get.format(data_dir=root)
    if _tensorflow_missing():
        raise DatasetUnavailableError(
            f"Data set {spec.name!r} is not prepared in {root} and "
            f"TensorFlow, which reads tensorflow-datasets, is not installed. "
            f"{how_to_get}"
        )
    from keras_bninit.harness import tfds_source

    if not tfds_source.prepared(spec.tfds_name, data_dir):
        raise DatasetUnavailableError(
            f"Data set {spec.name!r} is not prepared in {root} and cannot "
            f"be loaded offline. {how_to_get}"
        )
