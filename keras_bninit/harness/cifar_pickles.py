"""CIFAR-10/100's original python pickles, read without running code.

The CIFAR web page's "python version" is a folder of pickles
(`cifar-10-batches-py/`, `cifar-100-python/`). `pickle.load` on a file
from anyone runs that file's code, so they are read with a restricted
unpickler that rebuilds NumPy arrays (as NumPy 1 or NumPy 2 wrote them)
and plain containers, and refuses any other name a file asks for
(`BadDataError`, naming the file).
"""

import builtins
import codecs
import os
import pickle

import numpy as np

from keras_bninit.harness.datasets import (
    _CIFAR_PICKLES as CIFAR_FOLDERS,
)
from keras_bninit.harness.datasets import (
    BadDataError,
    DatasetUnavailableError,
    RawData,
)


def _numpy_multiarray():
    try:  # NumPy 2
        from numpy._core import multiarray
    except ImportError:  # NumPy 1
        from numpy.core import multiarray
    return multiarray


def _numpy_frombuffer():
    try:  # NumPy 2
        from numpy._core.numeric import _frombuffer
    except ImportError:  # NumPy 1
        from numpy.core.numeric import _frombuffer
    return _frombuffer


# What CIFAR's python pickles may name: plain containers and NumPy's array
# reconstruction, as NumPy 1 (`numpy.core`) and NumPy 2 (`numpy._core`)
# write it. Anything else (os.system, eval, a class's __reduce__) is refused
# before it is looked up, so no code from a data file ever runs.
_PICKLE_GLOBALS = {
    **{
        (module, name): lambda name=name: getattr(_numpy_multiarray(), name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (module, "_frombuffer"): _numpy_frombuffer
        for module in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
    **{
        ("builtins", name): lambda name=name: getattr(builtins, name)
        for name in ("bytearray", "bytes", "complex", "frozenset", "set")
    },
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds arrays and containers, and nothing else."""

    def find_class(self, module, name):
        # Python 2's names (__builtin__, copy_reg) are mapped to Python 3's
        # by `fix_imports` before this point.
        make = _PICKLE_GLOBALS.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which CIFAR's files never do "
                "(refused: only arrays and plain containers are read)"
            )
        return make()


def _unpickle(path):
    """One CIFAR python file, read without running any code from it."""
    with open(path, "rb") as f:
        try:
            return _CifarUnpickler(f, encoding="bytes").load()
        except Exception as error:  # any malformed stream is bad input
            raise BadDataError(
                f"{path} is not a CIFAR python file: "
                f"{type(error).__name__}: {error}"
            ) from error


def _pickle_images(batch):
    """CIFAR's rows of 3072 bytes (R, G, B planes) as [N, 32, 32, 3]."""
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()


def find(name, data_dir):
    """The CIFAR python-version folder in or at `data_dir`, or None."""
    if data_dir is None:
        return None
    folder = CIFAR_FOLDERS[name]
    for candidate in (os.path.join(data_dir, folder), data_dir):
        if os.path.basename(os.path.normpath(candidate)) == folder and (
            os.path.isdir(candidate)
        ):
            return candidate
    return None


def load(name, folder):
    """Reads the original CIFAR-10/100 python pickles from `folder`.

    CIFAR-10: `data_batch_1..5` (in this order) and `test_batch`, with
    `batches.meta`; CIFAR-100: `train`, `test` (fine labels) and `meta`.
    The order of the examples is the files' order, which is also the
    order of tensorflow-datasets' ids ("train_00000", ...), so both sources
    give the same arrays and the same validation split.

    Returns:
        A `RawData`.
    """
    try:
        if name == "cifar10":
            parts = [
                _unpickle(os.path.join(folder, f"data_batch_{i}"))
                for i in range(1, 6)
            ]
            test = _unpickle(os.path.join(folder, "test_batch"))
            meta = _unpickle(os.path.join(folder, "batches.meta"))
            names = tuple(n.decode() for n in meta[b"label_names"])
            key = b"labels"
        else:
            parts = [_unpickle(os.path.join(folder, "train"))]
            test = _unpickle(os.path.join(folder, "test"))
            meta = _unpickle(os.path.join(folder, "meta"))
            names = tuple(n.decode() for n in meta[b"fine_label_names"])
            key = b"fine_labels"
        images = np.concatenate([_pickle_images(p) for p in parts])
        labels = np.concatenate([np.asarray(p[key]) for p in parts])
        return RawData(
            images,
            labels.astype(np.int64),
            _pickle_images(test),
            np.asarray(test[key], dtype=np.int64),
            names,
            source=f"pickles:{folder}",
        )
    except BadDataError:
        raise
    except (OSError, KeyError, ValueError, pickle.UnpicklingError) as error:
        raise DatasetUnavailableError(
            f"{folder} does not hold a readable CIFAR python version "
            f"({type(error).__name__}: {error})."
        ) from error
