"""activation_std against closed forms and Monte Carlo with Keras's ops."""

import math

import keras
import numpy as np
import pytest

import keras_bninit as kb


def test_relu_closed_form():
    # Section 3.3: sqrt(1/2 - 1/(2 pi)) = 0.5838...
    assert kb.activation_std("relu") == pytest.approx(
        math.sqrt(0.5 - 1 / (2 * math.pi)), abs=1e-10
    )
    assert kb.activation_std("linear") == pytest.approx(1.0, abs=1e-10)
    assert kb.activation_std("relu6") == pytest.approx(0.58382, abs=1e-4)


@pytest.mark.parametrize("name", kb.available_activations())
def test_matches_keras_activation_monte_carlo(name):
    z = np.random.default_rng(1).standard_normal(2_000_000).astype("float32")
    y = keras.ops.convert_to_numpy(keras.activations.get(name)(z))
    assert kb.activation_std(name) == pytest.approx(y.std(), abs=2e-3)


def test_numbers_pass_through():
    assert kb.activation_std(0.58) == 0.58
    assert kb.activation_std(1) == 1.0


@pytest.mark.parametrize("bad", ["rleu", None, -0.5, 0, True])
def test_rejects(bad):
    with pytest.raises(ValueError, match="Received"):
        kb.activation_std(bad)


def test_error_lists_choices():
    with pytest.raises(ValueError, match="relu6"):
        kb.activation_std("rleu")
