"""TensorFlow for the harness's input, kept off the GPUs of other backends.

TensorFlow maps every visible GPU and reserves most of its memory at its
first op. When Keras trains on JAX or PyTorch and TensorFlow is only there
for tf.data or tensorflow-datasets, that memory belongs to the model, so
the harness imports TensorFlow through `tensorflow()`, which hides the GPUs
from it before any TensorFlow op runs.
"""

import contextlib
import importlib.util
import os
import random
import sys

import numpy as np

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


class VariableBatch:
    """Reads and assigns a fixed list of variables with TensorFlow's own
    ops, eagerly, without Keras's per-variable wrapping (TensorFlow
    backend).

    Through Keras, reading the 88 state variables of a ResNet-8 (each
    epoch's checkpoint) takes 5.2 ms on a CPU and assigning them 8.4 ms;
    `ReadVariableOp` and `AssignVariableOp` on their handles take 0.9 ms
    and 1.4 ms. The values are those of Keras's reads and assignments, bit
    for bit. Nothing is traced: a `tf.function` over the same variables
    was as fast per call but cost 0.25 s to trace and instantiate for each
    program, more than a demo run's epochs saved.

    Args:
        variables: Keras variables (model and optimizer state).
    """

    def __init__(self, variables):
        self._tf = tensorflow()
        self._variables = list(variables)
        self._handles = [v.handle for v in self._variables]
        self._tf_dtypes = [self._tf.as_dtype(v.dtype) for v in self._variables]
        self._dtypes = [np.dtype(v.dtype) for v in self._variables]
        self._shapes = [tuple(v.shape) for v in self._variables]

    def read(self):
        """The variables' values: NumPy arrays (they may share buffers
        with TensorFlow's tensors; copy them to keep them)."""
        read = self._tf.raw_ops.ReadVariableOp
        return [
            read(resource=handle, dtype=dtype).numpy()
            for handle, dtype in zip(self._handles, self._tf_dtypes)
        ]

    def assign(self, values):
        """Assigns `values[k]` to variable k; False (nothing assigned) if a
        value's shape or dtype is not its variable's."""
        values = [np.asarray(v) for v in values]
        if len(values) != len(self._variables) or any(
            v.dtype != dtype or v.shape != shape
            for v, dtype, shape in zip(values, self._dtypes, self._shapes)
        ):
            return False
        assign = self._tf.raw_ops.AssignVariableOp
        for handle, value in zip(self._handles, values):
            assign(resource=handle, value=value)
        return True


@contextlib.contextmanager
def seeding_keeps_caches():
    """Within it, TensorFlow's global seed is set without clearing TF's
    caches.

    `tf.random.set_seed` (which `keras.utils.set_random_seed` calls) clears
    TensorFlow's kernel and function caches, so the next call of every
    compiled step is instantiated again: about 0.4 s per run of a shared
    program on 2 CPU cores. A run reads no global TF seed (its data use
    stateless ops seeded from the run seed, Keras's layers their own
    `SeedGenerator`s), so the seed is set as TensorFlow sets it in eager
    mode, less the clearing. Where TensorFlow is not loaded, or is not
    eager, or its internals differ, `tf.random.set_seed` runs as it is.
    """
    tf = sys.modules.get("tensorflow")
    random_module = getattr(tf, "random", None)
    original = getattr(random_module, "set_seed", None)
    if original is None:
        yield
        return

    def set_seed(seed):
        from tensorflow.python.eager import context

        seeds.append(seed)
        ctx = context.context()
        if not (
            context.executing_eagerly()
            and hasattr(ctx, "_seed")
            and hasattr(ctx, "_rng")
        ):
            return original(seed)
        ctx._seed = seed
        ctx._rng = random.Random(int(seed))
        return None

    random_module.set_seed = set_seed
    seeds = []
    try:
        yield
    finally:
        random_module.set_seed = original
    # Kernels made while op determinism had another setting would keep it:
    # the first time, and when the setting changed since the last run,
    # the caches are cleared as TF would.
    flag = _op_determinism()
    if seeds and _SEEDING.get("determinism", "unknown") != flag:
        original(seeds[-1])
    _SEEDING["determinism"] = flag


_SEEDING = {}


def _op_determinism():
    """Whether TensorFlow's op determinism is on (None if unknown)."""
    try:
        from tensorflow.python.framework import config as tf_config

        return tf_config.is_op_determinism_enabled()
    except (ImportError, AttributeError):
        return None
