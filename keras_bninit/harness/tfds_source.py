"""Reading tensorflow-datasets into NumPy arrays (needs TensorFlow).

`harness.datasets` calls this module only where TensorFlow and
tensorflow-datasets are installed, and then caches the arrays as `.npz`, so
later runs need neither.
"""

import os
import re

import numpy as np

from keras_bninit.harness._tf import tensorflow

tf = tensorflow()


class NotPrepared(RuntimeError):
    """The data set is not prepared and could not be downloaded."""


_ID = re.compile(r"^[A-Za-z]+_(\d+)$")


def order_by_id(ids):
    """The permutation that sorts tensorflow-datasets ids "train_00042".

    Returns None when some id does not have that form (keep the order).
    """
    numbers = []
    for value in ids:
        text = value.decode() if isinstance(value, bytes) else str(value)
        match = _ID.match(text)
        if match is None:
            return None
        numbers.append(int(match.group(1)))
    return np.argsort(np.asarray(numbers), kind="stable")


def _to_uint8(images, size=None):
    """Resizes (bilinear, antialiased like PIL) and rounds to uint8."""
    images = tf.convert_to_tensor(images)
    if size is not None:
        images = tf.image.resize(
            images, size, method="bilinear", antialias=True
        )
    return tf.cast(tf.clip_by_value(tf.round(images), 0, 255), tf.uint8)


def _collect(dataset):
    """Gathers a dataset of (image, label, id) into three NumPy arrays."""
    images, labels, ids = [], [], []
    for image_batch, label_batch, id_batch in dataset.batch(512):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
        ids.append(id_batch.numpy())
    if not images:
        raise NotPrepared("The data set has no examples.")
    return (
        np.concatenate(images),
        np.concatenate(labels).astype(np.int64),
        np.concatenate(ids),
    )


def _example(features):
    """(image, label, id) of a tensorflow-datasets example dict."""
    ident = features.get("id", tf.constant(b""))
    return features["image"], features["label"], ident


def load(tfds_name, data_dir, download, resize=None):
    """Reads a tensorflow-datasets set into NumPy arrays.

    Examples are put in the order of their ids ("train_00042") where the
    data set has ids of that form (CIFAR: the order of the original files,
    as in its python pickles), so the arrays, and the validation split, do
    not depend on how tensorflow-datasets shuffled them when it prepared
    its files.

    Args:
        tfds_name: the tensorflow-datasets name.
        data_dir: its data directory (None: its default).
        download: whether to download and prepare a missing set.
        resize: `(height, width)` to resize to (antialiased), or None.

    Returns:
        `(train_images, train_labels, test_images, test_labels,
        class_names)`: uint8 and int64 arrays, a tuple of names.

    Raises:
        NotPrepared: not prepared in `data_dir`, or the download failed.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if download:
        try:
            builder.download_and_prepare()
        except Exception as error:  # network, checksum or manual-dir errors
            raise NotPrepared(
                f"Could not download or build {tfds_name!r} into "
                f"{builder.data_dir}: {error}."
            ) from error
    arrays = []
    for split in ("train", "test"):
        try:
            dataset = builder.as_dataset(split=split, shuffle_files=False)
        except AssertionError as error:  # tfds: "could not find data"
            raise NotPrepared(
                f"Data set {tfds_name!r} is not prepared in "
                f"{builder.data_dir} and cannot be loaded offline."
            ) from error
        dataset = dataset.map(_example, num_parallel_calls=tf.data.AUTOTUNE)
        if resize is not None:
            dataset = dataset.map(
                lambda x, y, i: (_to_uint8(x, resize), y, i),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
        images, labels, ids = _collect(dataset)
        order = order_by_id(ids)
        if order is not None:
            images, labels = images[order], labels[order]
        arrays.extend((images, labels))
    return (*arrays, tuple(builder.info.features["label"].names))


def prepared(tfds_name, data_dir):
    """Whether tensorflow-datasets has the data set in `data_dir`."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    info = os.path.join(str(builder.data_dir), "dataset_info.json")
    return tf.io.gfile.exists(info)
