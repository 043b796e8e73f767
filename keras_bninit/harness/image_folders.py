"""Class-folder image data sets: listed, checked, decoded once, cached.

A directory data set is a folder with one subfolder of images per class
(or `train/` and `test/` folders that each have them). It is user data, so
it is checked before a run claims or writes anything (`check`), and every
fault is `BadDataError`, one line naming the file or class:

- only regular files: a FIFO named `x.png` would block the reader for
  good, a device or a socket cannot be an image, and links are refused as
  in a run's own folders;
- every image decodes with Pillow, whose decompression-bomb guard (an
  image of more than twice `PIL.Image.MAX_IMAGE_PIXELS` pixels) is a
  refusal, not a traceback; zero-byte, truncated and non-image files are
  bad input, not a fault of the machine;
- every class has as many images as the stratified test and validation
  splits (Section 4.2) need.

Decoded images are resized once (bilinear, antialiased) and cached as
`.npz` under `~/.cache/keras_bninit` (`KERAS_BNINIT_CACHE`), keyed by the
files' names, sizes and times and the image size, so the check's decode is
the run's too.
"""

import hashlib
import os
import stat

import numpy as np

from keras_bninit.harness.config import TEST_FRACTION, VALIDATION_FRACTION
from keras_bninit.harness.datasets import (
    CACHE_VERSION,
    BadDataError,
    RawData,
    load_cache,
    save_cache,
    validation_split,
)

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")


def _regular_file(path):
    """Raises `BadDataError` unless `path` is a regular file (not a link)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        return
    kind = (
        "a symbolic link"
        if stat.S_ISLNK(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
        else "not a regular file"
    )
    raise BadDataError(
        f"{path} is {kind}; the images of a directory data set must be "
        "regular files."
    )


def _image_files(folder):
    """`(class_names, [(path, class_index)])` of a class-folder tree."""
    names = sorted(
        n
        for n in os.listdir(folder)
        if os.path.isdir(os.path.join(folder, n)) and not n.startswith(".")
    )
    files = []
    for index, name in enumerate(names):
        for root, _, filenames in sorted(os.walk(os.path.join(folder, name))):
            for filename in sorted(filenames):
                if filename.lower().endswith(IMAGE_SUFFIXES):
                    path = os.path.join(root, filename)
                    _regular_file(path)
                    files.append((path, index))
    return tuple(names), files


def _check_split(names, labels, fraction, part):
    """Raises `BadDataError` where `validation_split(labels, fraction)`
    cannot draw `part` (the conditions of a stratified split, named)."""
    counts = np.bincount(labels, minlength=len(names))
    present = np.flatnonzero(counts)
    small = present[np.argmin(counts[present])]
    held_out = int(np.ceil(fraction * len(labels)))
    if counts[small] < 2:
        where = "" if part == "test" else " left after the test split"
        raise BadDataError(
            f"class {names[small]!r} has {counts[small]} image(s){where}; "
            f"the stratified {part} split needs at least 2 per class."
        )
    if held_out < present.size:
        raise BadDataError(
            f"the stratified {part} split takes {held_out} of "
            f"{len(labels)} images but needs one of each of the "
            f"{present.size} classes (class {names[small]!r} has the "
            f"fewest, {counts[small]}); add images."
        )


def _check_class_sizes(names, files, split):
    """Raises `BadDataError` unless the labels of `files` survive the
    stratified splits a run draws: the held-out test set (without `train/`
    and `test/`), then the validation set."""
    labels = np.asarray([c for _, c in files], np.int64)
    if not split:
        _check_split(names, labels, TEST_FRACTION, "test")
        rest, _ = validation_split(labels, TEST_FRACTION)
        labels = labels[rest]
    _check_split(names, labels, VALIDATION_FRACTION, "validation")


def listing(data_dir):
    """`(split, class_names, files, test_files)` of a class-folder data
    set, checked without reading an image: the folder exists and holds at
    least 2 class subfolders (or `train/` and `test/` with the same ones),
    each with enough images for the splits, all regular files.

    Raises:
        ValueError: anything else, in one line naming the folder, file or
            class (`BadDataError` for files and classes).
    """
    suffixes = ", ".join(IMAGE_SUFFIXES)
    what = (
        "a folder with one subfolder of images per class (or `train/` "
        f"and `test/` folders that each have them; {suffixes})"
    )
    if data_dir is None or not os.path.isdir(data_dir):
        raise ValueError(
            f"A directory data set needs {what}. Received: {data_dir!r}"
        )
    train_dir = os.path.join(data_dir, "train")
    test_dir = os.path.join(data_dir, "test")
    split = os.path.isdir(train_dir) and os.path.isdir(test_dir)
    try:
        names, files = _image_files(train_dir if split else data_dir)
        test_names, test_files = (
            _image_files(test_dir) if split else (names, [])
        )
    except OSError as error:
        raise ValueError(f"{data_dir!r} cannot be listed ({error}).") from None
    if test_names != names:
        raise ValueError(
            f"{test_dir} has the classes {list(test_names)}, "
            f"{train_dir} has {list(names)}; they must be the same."
        )
    counts = {name: 0 for name in names}
    for _, label in files:
        counts[names[label]] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if len(names) < 2 or empty:
        found = (
            f"class folders without images: {', '.join(empty[:5])}"
            if empty and len(names) >= 2
            else f"{len(names) - len(empty)} class folder(s) with images"
        )
        raise ValueError(
            f"{data_dir!r} is not an image data set ({found}); give {what}."
        )
    _check_class_sizes(names, files, split)
    return split, names, files, test_files


def _read_images(files, image_size):
    """Decodes to RGB and resizes (bilinear, antialiased) with Pillow."""
    from PIL import Image

    height, width = image_size
    images = np.empty((len(files), height, width, 3), np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            _regular_file(path)  # not swapped for a FIFO since the listing
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.BILINEAR)
                images[i] = np.asarray(image)
        except Image.DecompressionBombError as error:
            raise BadDataError(
                f"{path} is refused as a decompression bomb ({error})"
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            if isinstance(error, BadDataError):
                raise
            reason = str(error).splitlines()[0] if str(error) else ""
            reason = reason.replace(f" {path!r}", "")  # named already
            raise BadDataError(
                f"{path} is not a readable image "
                f"({type(error).__name__}: {reason})."
            ) from None
    return images, np.asarray([c for _, c in files], np.int64)


def _cache_path(data_dir, image_size, files):
    digest = hashlib.sha256()
    digest.update(repr((os.path.realpath(data_dir), image_size)).encode())
    for path, label in files:
        info = os.stat(path)
        digest.update(
            repr((path, label, info.st_size, info.st_mtime_ns)).encode()
        )
    folder = os.environ.get(
        "KERAS_BNINIT_CACHE",
        os.path.join(os.path.expanduser("~"), ".cache", "keras_bninit"),
    )
    return os.path.join(
        folder, f"directory-{digest.hexdigest()[:24]}-v{CACHE_VERSION}.npz"
    )


def load(data_dir, image_size):
    """The `RawData` of the class folders in `data_dir` at `image_size`,
    decoded once and then read from the cache.

    Raises:
        ValueError: not an image data set; `BadDataError` (a ValueError)
            naming the file or class that cannot be used.
    """
    split, names, files, test_files = listing(data_dir)
    cache = _cache_path(data_dir, image_size, files + test_files)
    if os.path.isfile(cache):
        return load_cache(cache)
    images, labels = _read_images(files, image_size)
    test_images = test_labels = None
    if split:
        test_images, test_labels = _read_images(test_files, image_size)
    raw = RawData(
        images, labels, test_images, test_labels, names, source=data_dir
    )
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        save_cache(cache, raw)
    except OSError:
        pass  # no cache: decoded again next time
    return raw
