"""TensorFlow for the harness's input, kept off the GPUs of other backends.

TensorFlow maps every visible GPU and reserves most of its memory at its
first op. When Keras trains on JAX or PyTorch and TensorFlow is only there
for tf.data or tensorflow-datasets, that memory belongs to the model, so
the harness imports TensorFlow through `tensorflow()`, which hides the GPUs
from it before any TensorFlow op runs.
"""

import importlib.util
import os

_HIDDEN = []


def available(module="tensorflow"):
    """Whether `module` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False


def tensorflow():
    """Imports TensorFlow; hides the GPUs from it off the TF backend.

    Returns:
        The `tensorflow` module.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow" and not _HIDDEN:
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:
            # TensorFlow was initialized before (another import ran an op):
            # too late to hide the GPUs; they stay as they are.
            pass
        _HIDDEN.append(True)
    return tf
