"""A run's own model taken back, its initial weights drawn again.

`harness.initial_weights` gives a built model's initializers the seeds that
a build under the current seed would give them. The arrays must be those of
a fresh build under that seed, bit for bit, on every backend, and the model
(its saved config) the fresh build's; a model where that cannot be made
sure is never learned, and its runs build fresh models as before.
"""

import json
import random

import keras
import numpy as np
import pytest

import keras_bninit as kb
from keras_bninit import models, seeding
from keras_bninit.harness.initial_weights import Draws, InitialWeights
from keras_bninit.harness.weights_layout import read_values
from keras_bninit.initializers import VarianceScaling
from keras_bninit.norms import norm_layer


def _build(seed, name="resnet8", norm="standard", shape=(8, 8, 1), **kwargs):
    kb.set_seed(seed, deterministic=False)
    with Draws() as draws:
        model = models.create_model(
            name,
            num_classes=10,
            input_shape=shape,
            bn_gamma=0.1,
            input_bn=True,
            norm_layer=norm_layer(norm),
            **kwargs,
        )
    return model, draws


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.mark.core
@pytest.mark.parametrize(
    "name, shape, policy",
    [
        ("resnet8", (8, 8, 1), "float32"),
        ("resnet8", (8, 8, 1), "mixed_float16"),
        ("resnet8", (8, 8, 1), "bfloat16"),  # drawn by the backend
        ("repvgg_a0", (32, 32, 3), "float32"),
    ],
)
def test_weights_drawn_again_are_a_fresh_builds(name, shape, policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model, draws = _build(1, name, shape=shape)
        learned = InitialWeights.learn(model, draws)
        assert learned is not None and learned.model is model
        first = read_values(model.variables)
        for variable in model.variables:  # drawn, not read back
            variable.assign(np.zeros(variable.shape, variable.dtype))
        for seed in (2, 1):
            kb.set_seed(seed, deterministic=False)
            values = learned.draw()
            counts = seeding.weight_draws()
            fresh, _ = _build(seed, name, shape=shape)
            _same(values, read_values(fresh.variables))
            # As many draws of each key as the fresh build made (a second
            # build under the same seed would differ from the first).
            assert counts == seeding.weight_draws()
            # The config (the initializers' seeds) is the fresh build's.
            assert json.dumps(model.get_config(), sort_keys=True) == (
                json.dumps(fresh.get_config(), sort_keys=True)
            )
        _same(values, first)  # seed 1 again: the first build's arrays
        kb.set_seed(2, deterministic=False)
        changed = [
            not np.array_equal(a, b) for a, b in zip(learned.draw(), first)
        ]
        kernels = [isinstance(s[0], VarianceScaling) for s in learned._sources]
        assert changed == kernels  # another seed: other kernels, same rest
    finally:
        keras.config.set_dtype_policy(previous)


class _Lying(keras.layers.Layer):
    """Says its gamma comes from ones; makes it from 0.3."""

    def build(self, input_shape):
        self.gamma_initializer = keras.initializers.Ones()
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            name="gamma",
            initializer=keras.initializers.Constant(0.3),
        )

    def call(self, x):
        return x * self.gamma


def _small(*layers):
    inputs = keras.Input((4,))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _zoo_dense(units, key, **kwargs):
    return keras.layers.Dense(
        units, kernel_initializer=VarianceScaling(key=key), **kwargs
    )


@pytest.mark.parametrize(
    "case",
    [
        "zoo",
        "a1",
        "keras random",
        "explicit seed",
        "key twice",
        "global draws",
        "before set_seed",
        "lying attribute",
    ],
)
def test_models_that_cannot_be_drawn_again_are_not_learned(case, monkeypatch):
    if case == "a1":  # its own layers make their constants inline
        model, draws = _build(1, norm="a1")
        assert InitialWeights.learn(model, draws) is None
        return
    makers = {
        "zoo": lambda: [_zoo_dense(3, "a"), _zoo_dense(2, "b")],
        "keras random": lambda: [_zoo_dense(3, "a"), keras.layers.Dense(2)],
        "explicit seed": lambda: [
            keras.layers.Dense(
                3, kernel_initializer=VarianceScaling(key="a", seed=5)
            )
        ],
        "key twice": lambda: [_zoo_dense(4, "a"), _zoo_dense(2, "a")],
        "global draws": lambda: [
            _zoo_dense(3, "a"),
            keras.layers.Dense(2, kernel_initializer=_python_random_ones()),
        ],
        "before set_seed": lambda: [_zoo_dense(3, "a")],
        "lying attribute": lambda: [_zoo_dense(3, "a"), _Lying()],
    }
    kb.set_seed(1, deterministic=False)
    if case == "before set_seed":
        monkeypatch.setitem(seeding._WEIGHTS, "seed", None)
    with Draws() as draws:
        model = _small(*makers[case]())
    learned = InitialWeights.learn(model, draws)
    assert (learned is not None) == (case == "zoo"), case


def _python_random_ones():
    random.random()  # a draw a skipped build would not make
    return keras.initializers.Ones()
