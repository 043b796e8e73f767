"""Op determinism does not leak between tests, so XLA tests compile.

`set_seed` (deterministic by default) turns on TensorFlow op determinism
for the process, and Keras then trains `jit_compile=True` models without
XLA, with only a warning. conftest.py turns it off again after each test;
the XLA tests assert `model.jit_compile is True` after `fit`.
"""

import keras
import numpy as np
import pytest

import keras_bninit as kb

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="op determinism is TensorFlow's",
)


def _fit_compiled():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), kb.batch_norm(0.1)]
    )
    model.compile("sgd", "mse", jit_compile=True)
    x = np.ones((8, 3), "float32")
    model.fit(x, np.zeros((8, 2), "float32"), verbose=0)
    return model


def _determinism():
    from tensorflow.python.framework import config

    return config.is_op_determinism_enabled()


def test_a_determinism_makes_keras_drop_xla():
    kb.set_seed(0)  # deterministic=True: op determinism on
    assert _determinism()
    with pytest.warns(UserWarning, match="doesn't support `jit_compile"):
        model = _fit_compiled()
    assert model.jit_compile is False  # what the XLA tests' assert catches


def test_b_next_test_starts_without_determinism_and_compiles():
    assert not _determinism()
    assert _fit_compiled().jit_compile is True
