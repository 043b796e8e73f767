"""The checks every normalization layer kind passes (keras-hub's
`run_layer_test`): config and `.keras` round trips, mixed precision, one
compiled `fit` step, the parameter groups of Section 3.2 and both
moving-variance conventions of Section 3.1, running statistics against
NumPy. test_layers.py runs them over every kind.
"""

import functools
import os
import re
import tempfile

import keras
import numpy as np
import pytest
from _backend import BACKEND, to_numpy

import keras_bninit as kb

SHAPE = (8, 4, 4, 3)  # images: batch, height, width, channels
# XLA on TensorFlow and JAX; PyTorch's is torch.compile, slow to compile.
JIT = BACKEND != "torch"
# Largest error of a mixed-precision output relative to the largest float32
# one: inputs and outputs keep 8 (bfloat16) or 11 (float16) bits.
MIXED_TOLERANCE = {"mixed_bfloat16": 2e-2, "mixed_float16": 3e-3}


def data(shape=SHAPE, seed=0):
    """Normal samples with an offset and scale per channel."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, size=shape[-1])
    offset = rng.uniform(-2.0, 2.0, size=shape[-1])
    return (rng.normal(size=shape) * scale + offset).astype("float32")


def randomize(layer, seed=1):
    """Sets every trainable weight to random values (betas and gate weights
    of both signs); returns them by name."""
    rng = np.random.default_rng(seed)
    params = {}
    for variable in layer.trainable_weights:
        value = rng.uniform(0.5, 1.5, size=variable.shape).astype("float32")
        if variable.name in ("beta", "gate_weight"):
            value = value * rng.choice([-1.0, 1.0], size=variable.shape)
        variable.assign(value)
        params[variable.name] = value
    return params


def pytorch_running_stats(batches, momentum=0.9, ddof=1):
    """running = momentum * running + (1 - momentum) * batch from mean 0
    and variance 1, in float64, with the unbiased batch variance (over
    n - 1) as PyTorch, the reference, keeps it (Section 3.1); `ddof=0` is
    Keras's update (the biased variance, over n)."""
    mean, var = 0.0, 1.0
    for x in batches:
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        mean = momentum * mean + (1 - momentum) * flat.mean(axis=0)
        var = momentum * var + (1 - momentum) * flat.var(axis=0, ddof=ddof)
    return mean, var


def _unbiased(layer):
    return getattr(layer, "moving_variance_convention", None) == "unbiased"


def _assert_running_stats(layer, batches):
    mean, var = pytorch_running_stats(
        batches, layer.momentum, ddof=int(_unbiased(layer))
    )
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(layer.moving_variance), var, rtol=1e-5)


def _first_layer_model(layer):
    """input -> `layer` -> 1x1 conv: the layer's statistics are the
    inputs', and each of its parameters gets a gradient."""
    inputs = keras.Input(SHAPE[1:])
    outputs = keras.layers.Conv2D(2, 1, name="head")(layer(inputs))
    return keras.Model(inputs, outputs)


def _fit(model, x, batch_size=SHAPE[0]):
    model.compile(
        kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1)),
        "mse",
        jit_compile=JIT,
    )
    target = data((*x.shape[:3], 2), seed=3)
    history = model.fit(x, target, batch_size, shuffle=False, verbose=0)
    assert model.jit_compile is JIT  # no silent fallback from XLA
    assert np.isfinite(history.history["loss"]).all()


def _assert_same(a, b, x):
    """Same outputs in inference and training (which updates both alike)."""
    for training in (False, True):
        np.testing.assert_array_equal(
            to_numpy(a(x, training=training)), to_numpy(b(x, training=training))
        )


# ------------------------------------------------------------ the checks


def check_config(factory, c, scale):
    """get_config / from_config: the same config, the same initial weights
    and, with the same weights, the same outputs."""
    x = data()
    layer = factory(name="norm")
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(layer)
    )
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    layer(x)
    clone(x)
    for a, b in zip(clone.weights, layer.weights):  # c, zeros, ones
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), b.name)
    randomize(layer)
    clone.set_weights(layer.get_weights())
    _assert_same(clone, layer, x)
    return layer


def check_save_load(factory, c, scale):
    """A `.keras` file of a model holding the layer gives equal outputs,
    and the loaded layer's running statistics go on as before."""
    x, x_next = data(), data(seed=7)
    layer = factory(name="norm")
    model = _first_layer_model(layer)
    randomize(layer)
    model(x, training=True)  # moves the running statistics
    with tempfile.TemporaryDirectory() as folder:
        model.save(os.path.join(folder, "model.keras"))
        loaded = keras.saving.load_model(os.path.join(folder, "model.keras"))
    clone = loaded.get_layer("norm")
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    _assert_same(loaded, model, x_next)
    _assert_running_stats(clone, [x, x_next])
    return clone


def check_mixed_precision(factory, c, scale):
    """Under a mixed policy: outputs in the compute dtype, float32
    variables, and the float32 layer's numbers up to rounding."""
    x = data()
    expected = to_numpy(factory()(x, training=True))
    for policy, tolerance in MIXED_TOLERANCE.items():
        layer = factory(dtype=policy)
        y = layer(x, training=True)
        compute = policy.split("_")[1]
        assert keras.backend.standardize_dtype(y.dtype) == compute, policy
        assert {v.dtype for v in layer.weights} == {"float32"}, policy
        np.testing.assert_allclose(
            to_numpy(y).astype("float32"),
            expected,
            atol=tolerance * np.abs(expected).max(),
            err_msg=policy,
        )
        # The statistics of the rounded inputs, kept in float32.
        rounded = to_numpy(keras.ops.cast(x, compute)).astype("float32")
        _assert_running_stats(layer, [rounded])


def check_fit(factory, c, scale):
    """One compiled `fit` step trains every parameter and moves the running
    statistics as Section 3.1 says."""
    x = data()
    layer = factory(name="norm")
    model = _first_layer_model(layer)
    before = [to_numpy(v) for v in layer.trainable_weights]
    _fit(model, x)
    assert int(to_numpy(model.optimizer.iterations)) == 1
    for b, v in zip(before, layer.trainable_weights):
        assert not np.array_equal(b, to_numpy(v)), v.name
    _assert_running_stats(layer, [x])


def check_param_groups(factory, c, scale):
    """The parameter that carries c is a BN scale (lr / a, no decay); the
    layer's others get the full rate and no decay (Section 3.2)."""
    layer = factory()
    layer.build(SHAPE)
    optimizer = kb.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1), gamma_lr_divisor=100.0, weight_decay=0.5
    )
    variables = layer.trainable_weights
    assert {v.name: optimizer.group_of(v) for v in variables} == {
        v.name: kb.SCALE if v.name == scale else kb.NO_DECAY for v in variables
    }
    (carrier,) = [v for v in variables if v.name == scale]
    np.testing.assert_allclose(to_numpy(carrier), c, rtol=1e-6)
    assert not (layer.moving_mean.trainable or layer.moving_variance.trainable)
    # One step of unit gradients: the scale moves lr / a, the others lr.
    before = [to_numpy(v) for v in variables]
    optimizer.apply([np.ones(v.shape, "float32") for v in variables], variables)
    for b, v in zip(before, variables):
        step = 0.1 / 100.0 if v.name == scale else 0.1
        np.testing.assert_allclose(to_numpy(v), b - step, rtol=1e-6, atol=1e-7)


def check_unbiased_config(factory, c, scale):
    """`moving_variance="unbiased"` survives the config and a `.keras`
    file, and the loaded layer goes on with PyTorch's update."""
    unbiased = functools.partial(factory, moving_variance="unbiased")
    assert check_config(unbiased, c, scale).get_config()["moving_variance"] == (
        "unbiased"
    )
    assert _unbiased(check_save_load(unbiased, c, scale))


def check_unbiased_fit(factory, c, scale):
    """Compiled `fit` keeps PyTorch's running variance with
    `moving_variance="unbiased"` and Keras's, measurably another, with
    "biased"."""
    batches = [data(seed=s) for s in range(3)]
    variances = []
    for convention in ("unbiased", "biased"):
        layer = factory(moving_variance=convention)
        _fit(_first_layer_model(layer), np.concatenate(batches))
        assert _unbiased(layer) is (convention == "unbiased")
        _assert_running_stats(layer, batches)
        variances.append(to_numpy(layer.moving_variance))
    assert not np.allclose(*variances, rtol=1e-4)


def check_bad_moving_variance(factory, c, scale):
    """A bad `moving_variance` fails at construction, naming the choices."""
    for bad in ("Unbiased", "pytorch", True, None, 1):
        with pytest.raises(
            ValueError,
            match=r"`moving_variance` must be one of biased, unbiased\. "
            rf"Received: moving_variance={re.escape(repr(bad))}$",
        ):
            factory(moving_variance=bad)


CHECKS = {
    check.__name__.removeprefix("check_"): check
    for check in (
        check_config,
        check_save_load,
        check_mixed_precision,
        check_fit,
        check_param_groups,
        check_unbiased_config,
        check_unbiased_fit,
        check_bad_moving_variance,
    )
}


def check_norm_layer(factory, check=None, *, c, scale="gamma"):
    """Runs one of `CHECKS` (by name; every one for None) on `factory`.

    Args:
        factory: `factory(**kwargs) -> layer`, a new normalization layer
            with `kwargs` (`name`, `dtype`, `moving_variance`) applied.
        check: the name of one check, or None.
        c: the initial value of the parameter that carries the BN scale
            init (Section 3.2).
        scale: that parameter's name (`"gamma"`; A2's is `"rho"`).
    """
    for name in CHECKS if check is None else (check,):
        CHECKS[name](factory, c, scale)
