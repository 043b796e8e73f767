"""Loading `.keras` files that hold this package's layers and optimizer."""

import os
import re
import zipfile
import zlib

import keras


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True):
    """`keras.saving.load_model` with this package's classes registered.

    Importing `keras_bninit` registers `InputBatchNorm`, the BN
    formulations, `ParamGroupOptimizer`, `TorchSGD`, `EpochCosineDecay`,
    ...; Keras's own loader cannot find them in a process that has not
    imported the package, and says so in a long `TypeError`. This function
    imports them by being called, and turns a failure into one line.

    Args:
        filepath: a `.keras` file.
        custom_objects, compile, safe_mode: as `keras.saving.load_model`.

    Returns:
        The `keras.Model`.

    Raises:
        ValueError: the file cannot be loaded; one line that names it and
            the reason (e.g. a class that is not registered).

    Example:

    ```python
    import keras_bninit as kb

    model = kb.load_model("runs/demo/runs/<run>/model.keras")
    ```
    """
    name = filepath
    if isinstance(filepath, os.PathLike):
        name = os.fspath(filepath)
    if isinstance(name, str):
        problem = _file_problem(name)
        if problem:
            raise ValueError(f"Cannot load {name!r}: {problem}")
    try:
        return keras.saving.load_model(
            filepath,
            custom_objects=custom_objects,
            compile=compile,
            safe_mode=safe_mode,
        )
    except (TypeError, ValueError, OSError) as error:
        raise ValueError(
            f"Cannot load {str(filepath)!r}: {_reason(error)}"
        ) from error
    except _DAMAGE as error:  # a zip or HDF5 member with flipped bits
        raise ValueError(
            f"Cannot load {str(filepath)!r}: it is damaged or truncated "
            f"({type(error).__name__}: {_reason(error)})"
        ) from error


def _file_problem(name):
    """Why the local file `name` is no `.keras` file, or None: missing, a
    folder, another format, or not a zip archive."""
    if "://" in name:
        return None  # a remote path: Keras's loader reads it
    if not os.path.lexists(name):
        return "no such file"
    if os.path.isdir(name):
        return (
            "it is a folder, not a .keras file (a SavedModel loads with "
            "keras.layers.TFSMLayer)"
        )
    if name.endswith(".h5"):
        return None  # Keras's legacy HDF5 format
    if not name.endswith(".keras"):
        return "not a .keras file (its name must end in .keras)"
    if not zipfile.is_zipfile(name):
        return (
            "it is not a .keras file (not a zip archive: damaged, "
            "truncated or another format)"
        )
    return None


def read_hdf5_whole(path):
    """Opens the HDF5 file at `path` and reads every object's header and
    attributes; raises what h5py raises for a damaged or truncated file
    (`OSError`, `RuntimeError`, `KeyError`, ...)."""
    import h5py  # Keras's own dependency

    def visit(name, obj):
        list(obj.attrs)

    with h5py.File(path, "r") as f:
        f.visititems(visit)


# What reading a damaged zip archive or HDF5 file raises besides OSError:
# zipfile's and zlib's errors, h5py's RuntimeError and KeyError, EOFError.
_DAMAGE = (zipfile.BadZipFile, zlib.error, RuntimeError, KeyError, EOFError)


def _reason(error):
    """The useful words of a Keras loading error, on one line."""
    text = str(error)
    missing = re.search(r"Could not locate class '([^']+)'", text)
    if missing:
        return (
            f"the class {missing[1]!r} is not registered; import the "
            "package that defines it (or pass custom_objects)"
        )
    line = " ".join(text.split())
    return (
        line[:300] + ("..." if len(line) > 300 else "") or type(error).__name__
    )
