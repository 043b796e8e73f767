"""A command's own process: its imports muted, its garbage collector.

Loaded before Keras (`cli._light_module`): nothing here imports a backend
at import time.
"""

import atexit
import contextlib
import gc
import os


def import_quietly():
    """Imports Keras (TensorFlow where installed) and the library, fd 2 muted.

    TensorFlow's C++ start-up notes (oneDNN, "no CUDA drivers", cuInit) are
    written straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL
    says; they would bury the one-line errors of this command. A failing
    import is re-raised with stderr restored.
    """
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras_bninit  # noqa: F401  (imports Keras)
        import keras_bninit.models  # noqa: F401
        from keras_bninit.harness import _tf

        if _tf.available():  # GPUs hidden from it off the TF backend
            _tf.tensorflow().config.list_physical_devices()  # notes, muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def collector_paused(own_process):
    """For a process of its own: no garbage collections during the imports
    (TensorFlow's import made about 1 s of them, each walking its
    objects), then every object they made frozen out of later ones; and at
    exit, what the command made frozen too, before the interpreter's last
    collection walks it (0.1-0.2 s after a demo: two programs' graphs)."""
    if not own_process:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
        atexit.register(gc.freeze)  # run before the final collection
