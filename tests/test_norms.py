"""Tests of the alternative BN formulations against Sections 3.1, 4.4, 4.5.

What every layer kind shares (config and `.keras` round trips, mixed
precision, compiled `fit`, parameter groups, the moving-variance
conventions) is checked by `_layer_checks` in test_layers.py; these tests
check each formulation's numbers against NumPy.
"""

import keras
import numpy as np
import pytest
from _backend import gradients
from _layer_checks import data, pytorch_running_stats, randomize

from keras_bninit import batch_norm, norms

KINDS = tuple(norms.NORM_LAYERS)
NEW_KINDS = tuple(k for k in KINDS if k != "standard")
SHAPES = ((6, 4, 5, 3), (8, 7, 3), (16, 3))  # images, sequences, dense
EPS = 1e-5
GATE_BIAS = {"rbn": 1.0, "rbn-": 1.0, "iebn": -1.0, "iebn-": -1.0}  # b_0


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _reference(kind, x, params, mean, var):
    """Sections 3.1, 4.4, 4.5 in NumPy (float64), channels last."""
    x = x.astype(np.float64)
    p = {k: v.astype(np.float64) for k, v in params.items()}
    x_hat = (x - mean) / np.sqrt(var + EPS)
    spatial = tuple(range(1, x.ndim - 1))
    if kind == "standard":
        return p["gamma"] * x_hat + p["beta"]
    if kind == "a1":
        return p["gamma"] * (x_hat + p["beta"])
    if kind == "a2":
        return p["rho"] * (p["gamma"] * x_hat + p["beta"])
    if kind in ("rbn", "iebn"):
        source = x_hat if kind == "rbn" else x
        s = source.mean(axis=spatial, keepdims=True) if spatial else source
        logits = p["gate_weight"] * s + p["gate_bias"]
    else:  # rbn-, iebn-
        logits = p["gate_bias"]
    return p["gamma"] * x_hat * _sigmoid(logits) + p["beta"]


def _batch_moments(x):
    axes = tuple(range(x.ndim - 1))
    x = x.astype(np.float64)
    return x.mean(axis=axes), x.var(axis=axes)  # biased, as Section 3.1


def _make(kind, gamma=1.0, name=None):
    return norms.norm_layer(kind)(gamma=gamma, name=name)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("moving_variance", ["biased", "unbiased"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy(kind, shape, moving_variance):
    x = data(shape)
    layer = norms.norm_layer(kind, moving_variance=moving_variance)()
    layer.build(x.shape)
    params = randomize(layer)

    # Training: batch statistics (biased variance, whichever the running
    # one averages), then the running update.
    y = layer(x, training=True)
    expected = _reference(kind, x, params, *_batch_moments(x))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    ddof = int(moving_variance == "unbiased")
    mean, var = pytorch_running_stats([x], ddof=ddof)
    np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, var, rtol=1e-5)

    # Inference: running statistics, which do not change.
    running = [np.array(layer.moving_mean), np.array(layer.moving_variance)]
    y = layer(x, training=False)
    expected = _reference(kind, x, params, mean, var)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean, running[0])
    np.testing.assert_array_equal(layer.moving_variance, running[1])


def test_channel_axis_other_than_last():
    x = data((4, 5, 6, 3))
    for kind in NEW_KINDS:
        first = norms.norm_layer(kind, axis=1)(gamma=0.5)
        last = _make(kind, gamma=0.5)
        x_first = np.moveaxis(x, -1, 1)
        last.build(x.shape)
        first.build(x_first.shape)
        params = randomize(last)
        for name, value in params.items():
            next(v for v in first.weights if v.name == name).assign(value)
        y_first = first(x_first, training=True)
        y_last = last(x, training=True)
        np.testing.assert_allclose(
            np.moveaxis(np.array(y_first), 1, -1), y_last, atol=1e-5
        )


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_head_equals_stock_layer(kind):
    """Running statistics and x_hat are exactly the stock layer's."""
    x = data((6, 4, 4, 3))
    layer, stock = _make(kind), batch_norm()
    for step in range(3):
        batch = x + step
        # Tails at initialization: a1/a2 are the identity on x_hat, the gated
        # forms multiply it by the constant sigmoid(b_0).
        factor = _sigmoid(GATE_BIAS[kind]) if kind in GATE_BIAS else 1.0
        for training in (True, False):
            y = np.array(layer(batch, training=training))
            y_stock = np.array(stock(batch, training=training))
            if factor == 1.0:
                np.testing.assert_array_equal(y, y_stock)
            else:
                np.testing.assert_allclose(y / factor, y_stock, rtol=1e-6)
        np.testing.assert_array_equal(layer.moving_mean, stock.moving_mean)
        np.testing.assert_array_equal(
            layer.moving_variance, stock.moving_variance
        )


# ------------------------------------------------------- initial values


@pytest.mark.parametrize(
    "kind, effective",
    [
        ("rbn", 0.731),
        ("rbn-", 0.731),
        ("iebn", 0.269),
        ("iebn-", 0.269),
        ("a1", 1.0),
        ("a2", 1.0),
    ],
)
def test_initial_effective_scale(kind, effective):
    x = data((32, 4, 4, 3))
    y = np.array(_make(kind)(x, training=True))
    std = y.reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(std, effective, atol=5e-4)
    np.testing.assert_allclose(y.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_output_scale_is_c_times_the_gate(kind):
    # The parameter that carries c is checked by _layer_checks.
    y = np.array(_make(kind, gamma=0.1)(data((16, 4, 4, 3)), training=True))
    gate = {"rbn": 0.731, "rbn-": 0.731, "iebn": 0.269, "iebn-": 0.269}
    expected = 0.1 * gate.get(kind, 1.0)
    np.testing.assert_allclose(
        y.reshape(-1, 3).std(axis=0), expected, atol=1e-4
    )


def test_initial_values():
    x = data((4, 3, 3, 2))
    a2 = norms.A2BatchNorm(rho=0.25)
    a2(x)
    np.testing.assert_allclose(a2.rho, 0.25)
    np.testing.assert_allclose(a2.gamma, 1.0)
    np.testing.assert_allclose(a2.beta, 0.0)
    for kind, bias in (("rbn", 1.0), ("iebn", -1.0), ("iebn-", -1.0)):
        layer = _make(kind)
        layer(x)
        np.testing.assert_allclose(layer.gamma, 1.0)
        np.testing.assert_allclose(layer.beta, 0.0)
        np.testing.assert_allclose(layer.gate_bias, bias)
        if kind.endswith("-"):
            assert layer.gate_weight is None
        else:
            np.testing.assert_allclose(layer.gate_weight, 0.0)


# ------------------------------------------------------------- gradients


@pytest.mark.parametrize("shape", SHAPES[::2])
@pytest.mark.parametrize("kind", NEW_KINDS)
def test_gradients_finite_and_reach_every_parameter(kind, shape):
    x = keras.Variable(data(shape), name="x")
    layer = _make(kind, gamma=0.1)
    layer.build(shape)
    rng = np.random.default_rng(2)
    weights = rng.normal(size=shape).astype("float32")
    _, grads = gradients(
        lambda: keras.ops.sum(
            keras.ops.multiply(layer(x.value, training=True), weights)
        ),
        layer.trainable_weights + [x],
    )
    for variable, grad in zip(layer.trainable_weights + [x], grads):
        assert grad is not None, variable.name
        grad = np.array(grad)
        assert np.all(np.isfinite(grad)), variable.name
        # Every channel of every parameter gets a nonzero gradient.
        assert np.all(np.abs(grad) > 0), (variable.name, grad)


# ---------------------------------------------------------- configuration


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_config_keeps_the_head_and_drops_the_stock_tail(kind):
    layer = norms.norm_layer(kind, momentum=0.8, epsilon=1e-3)(gamma=0.3)
    config = layer.get_config()
    assert config["momentum"] == 0.8 and config["epsilon"] == 1e-3
    for key in ("center", "scale", "gamma_initializer", "renorm"):
        assert key not in config


# ------------------------------------------------------ factory and args


def test_factories():
    assert set(norms.NORM_LAYERS) == {
        "standard",
        "a1",
        "a2",
        "rbn",
        "iebn",
        "rbn-",
        "iebn-",
    }
    stock = norms.norm_layer("standard")(gamma=0.1, name="bn")
    assert type(stock) is keras.layers.BatchNormalization
    assert stock.name == "bn"
    expected = {
        "a1": (norms.A1BatchNorm, True),
        "a2": (norms.A2BatchNorm, True),
        "rbn": (norms.RepresentativeBatchNorm, True),
        "rbn-": (norms.RepresentativeBatchNorm, False),
        "iebn": (norms.InstanceEnhancementBatchNorm, True),
        "iebn-": (norms.InstanceEnhancementBatchNorm, False),
    }
    for kind, (cls, instance_statistic) in expected.items():
        layer = norms.norm_layer(kind)(gamma=0.1, name=f"n{len(kind)}")
        assert type(layer) is cls
        assert layer.momentum == 0.9 and layer.epsilon == 1e-5
        if kind != "a2":
            assert getattr(layer, "instance_statistic", True) is (
                instance_statistic
            )
    # Defaults are bound; arguments at the call win.
    factory = norms.norm_layer("rbn", momentum=0.5)
    assert factory(gamma=1.0).momentum == 0.5
    assert factory(momentum=0.7).momentum == 0.7


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError, match="Received: kind='bn'") as info:
        norms.norm_layer("bn")
    for kind in norms.NORM_LAYERS:
        assert repr(kind) in str(info.value)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_bad_arguments_fail_at_construction(kind):
    factory = norms.norm_layer(kind)
    with pytest.raises(ValueError, match="Received: gamma=-1"):
        factory(gamma=-1)
    with pytest.raises(ValueError, match="Received: center=True"):
        factory(center=True)
    with pytest.raises(ValueError, match="Received: renorm=True"):
        factory(renorm=True)


def test_bad_rho_and_instance_statistic():
    with pytest.raises(ValueError, match="Received: rho=0"):
        norms.A2BatchNorm(rho=0)
    with pytest.raises(ValueError, match="Received: instance_statistic=1"):
        norms.RepresentativeBatchNorm(instance_statistic=1)


def test_gated_layers_reject_masks():
    layer = norms.RepresentativeBatchNorm()
    x = data((2, 4, 3))
    with pytest.raises(ValueError, match="does not support masks"):
        layer(x, mask=np.ones((2, 4), bool))
