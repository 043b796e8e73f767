"""Tests of the alternative BN formulations against Sections 3.1, 4.4, 4.5."""

import keras
import numpy as np
import pytest
from _backend import gradients

from keras_bninit import batch_norm, norms, optimizers

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


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    # Offset and scale per channel, so the head has something to remove.
    scale = rng.uniform(0.5, 3.0, size=shape[-1])
    offset = rng.uniform(-2.0, 2.0, size=shape[-1])
    return (rng.normal(size=shape) * scale + offset).astype("float32")


def _make(kind, gamma=1.0, name=None):
    return norms.norm_layer(kind)(gamma=gamma, name=name)


def _randomize(layer, seed=1):
    """Sets every trainable weight to random values; returns them by name."""
    rng = np.random.default_rng(seed)
    params = {}
    for variable in layer.trainable_weights:
        value = rng.uniform(0.5, 1.5, size=variable.shape).astype("float32")
        if variable.name in ("beta", "gate_weight"):
            value = value * rng.choice([-1.0, 1.0], size=variable.shape)
        variable.assign(value)
        params[variable.name] = value
    return params


def _groups(layer):
    """Parameter groups as `ParamGroupOptimizer`'s default rule sees them."""
    return {
        v.name: optimizers.default_group(v) for v in layer.trainable_weights
    }


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy(kind, shape):
    x = _data(shape)
    layer = _make(kind)
    layer.build(x.shape)
    params = _randomize(layer)
    mean, var = _batch_moments(x)

    # Training: batch statistics (biased variance), then the running update.
    y = layer(x, training=True)
    expected = _reference(kind, x, params, mean, var)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance, 0.9 + 0.1 * var, rtol=1e-5
    )

    # Inference: running statistics, which do not change.
    moving_mean = np.array(layer.moving_mean)
    moving_var = np.array(layer.moving_variance)
    y = layer(x, training=False)
    expected = _reference(kind, x, params, moving_mean, moving_var)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.moving_mean, moving_mean)


def test_channel_axis_other_than_last():
    x = _data((4, 5, 6, 3))
    for kind in NEW_KINDS:
        first = norms.norm_layer(kind, axis=1)(gamma=0.5)
        last = _make(kind, gamma=0.5)
        x_first = np.moveaxis(x, -1, 1)
        last.build(x.shape)
        first.build(x_first.shape)
        params = _randomize(last)
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
    x = _data((6, 4, 4, 3))
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
    x = _data((32, 4, 4, 3))
    y = np.array(_make(kind)(x, training=True))
    std = y.reshape(-1, 3).std(axis=0)
    np.testing.assert_allclose(std, effective, atol=5e-4)
    np.testing.assert_allclose(y.reshape(-1, 3).mean(axis=0), 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gamma_is_c_on_the_reduced_lr_parameter(kind):
    layer = _make(kind, gamma=0.1)
    y = np.array(layer(_data((16, 4, 4, 3)), training=True))
    scale_vars = [
        v
        for v in layer.trainable_weights
        if optimizers.default_group(v) == optimizers.SCALE
    ]
    assert len(scale_vars) == 1
    np.testing.assert_allclose(scale_vars[0], 0.1)
    gate = {"rbn": 0.731, "rbn-": 0.731, "iebn": 0.269, "iebn-": 0.269}
    expected = 0.1 * gate.get(kind, 1.0)
    np.testing.assert_allclose(
        y.reshape(-1, 3).std(axis=0), expected, atol=1e-4
    )


def test_initial_values():
    x = _data((4, 3, 3, 2))
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
    x = keras.Variable(_data(shape), name="x")
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


# ----------------------------------------------------- parameter groups


@pytest.mark.parametrize(
    "kind, groups",
    [
        ("standard", {"gamma": "scale", "beta": "no_decay"}),
        ("a1", {"gamma": "scale", "beta": "no_decay"}),
        ("a2", {"rho": "scale", "gamma": "no_decay", "beta": "no_decay"}),
        (
            "rbn",
            {
                "gamma": "scale",
                "beta": "no_decay",
                "gate_weight": "no_decay",
                "gate_bias": "no_decay",
            },
        ),
        (
            "iebn-",
            {"gamma": "scale", "beta": "no_decay", "gate_bias": "no_decay"},
        ),
    ],
)
def test_variables_carry_group_tags(kind, groups):
    layer = _make(kind)
    layer.build((2, 3))
    assert _groups(layer) == groups
    if kind == "standard":
        return  # the stock layer is classified by its names
    # Our layers tag every trainable variable explicitly, not by name.
    assert all(hasattr(v, optimizers._TAG) for v in layer.trainable_weights)
    assert not any(
        hasattr(v, optimizers._TAG) for v in layer.non_trainable_weights
    )


# ---------------------------------------------------------- serialization


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_config_round_trip(kind):
    layer = norms.norm_layer(kind, momentum=0.8, epsilon=1e-3)(
        gamma=0.3, name="norm"
    )
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    assert config["momentum"] == 0.8 and config["epsilon"] == 1e-3
    for key in ("center", "scale", "gamma_initializer", "renorm"):
        assert key not in config


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_keras_save_load_gives_identical_outputs(kind, tmp_path):
    x = _data((4, 5, 5, 3))
    inputs = keras.Input(shape=x.shape[1:])
    hidden = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    outputs = _make(kind, gamma=0.2, name="norm")(hidden)
    model = keras.Model(inputs, outputs)
    _randomize(model.get_layer("norm"))
    model(x, training=True)  # moves the running statistics
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("norm")) is type(model.get_layer("norm"))
    assert _groups(loaded.get_layer("norm")) == _groups(model.get_layer("norm"))
    for training in (False, True):
        np.testing.assert_array_equal(
            loaded(x, training=training), model(x, training=training)
        )


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_fit_one_step_compiled(kind):
    """One `fit` step in a compiled (XLA) graph, like the model zoo's."""
    x, target = _data((8, 4, 4, 3)), _data((8, 4, 4, 3), seed=3)
    inputs = keras.Input(shape=x.shape[1:])
    hidden = keras.layers.Conv2D(3, 1)(inputs)
    model = keras.Model(inputs, _make(kind, gamma=0.1)(hidden))
    model.compile(optimizer="sgd", loss="mse", jit_compile=True)
    before = [np.array(v) for v in model.weights]
    history = model.fit(x, target, epochs=1, batch_size=8, verbose=0)
    # Keras falls back to jit_compile=False (with a warning) when it cannot
    # compile, e.g. under TensorFlow op determinism.
    assert model.jit_compile is True
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.array_equal(b, v) for b, v in zip(before, model.weights)]
    assert all(changed)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_mixed_precision(kind):
    x = _data((8, 4, 4, 3))
    mixed = norms.norm_layer(kind, dtype="mixed_float16")(gamma=0.5)
    full = _make(kind, gamma=0.5)
    y_mixed = mixed(x, training=True)
    assert keras.backend.standardize_dtype(y_mixed.dtype) == "float16"
    assert all(v.dtype == "float32" for v in mixed.weights)
    np.testing.assert_allclose(
        np.array(y_mixed, "float32"), full(x, training=True), atol=1e-2
    )


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
    x = _data((2, 4, 3))
    with pytest.raises(ValueError, match="does not support masks"):
        layer(x, mask=np.ones((2, 4), bool))


# ------------------------------------ PyTorch's moving variance (Sec. 3.1)


def _pytorch_running_stats(batches):
    """running = 0.9 running + 0.1 batch, with the unbiased batch variance
    (over n - 1, n = the values a channel reduces over), as PyTorch's BN."""
    mean, var = 0.0, 1.0
    for x in batches:
        flat = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
        mean = 0.9 * mean + 0.1 * flat.mean(axis=0)
        var = 0.9 * var + 0.1 * flat.var(axis=0, ddof=1)
    return mean, var


@pytest.mark.parametrize("shape", SHAPES[::2])
@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_moving_variance(kind, shape):
    factory = norms.norm_layer(kind, moving_variance="unbiased")
    unbiased, biased = factory(gamma=0.5), _make(kind, gamma=0.5)
    assert unbiased.moving_variance_convention == "unbiased"
    unbiased.build(shape)
    biased.build(shape)
    params = _randomize(unbiased)
    for name, value in params.items():
        next(v for v in biased.trainable_weights if v.name == name).assign(
            value
        )
    batches = [_data(shape, seed=s) for s in range(3)]
    for x in batches:
        # Normalization uses the biased batch variance either way.
        np.testing.assert_array_equal(
            unbiased(x, training=True), biased(x, training=True)
        )
    mean, var = _pytorch_running_stats(batches)
    np.testing.assert_allclose(unbiased.moving_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(unbiased.moving_variance, var, rtol=1e-5)
    assert not np.allclose(biased.moving_variance, var, rtol=1e-4)
    # Inference: the tail on the running statistics.
    x = batches[0]
    expected = _reference(kind, x, params, mean, var)
    np.testing.assert_allclose(
        unbiased(x, training=False), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_moving_variance_in_compiled_fit(kind):
    batches = [_data((8, 4, 4, 3), seed=s) for s in range(3)]
    inputs = keras.Input(shape=(4, 4, 3))
    layer = norms.norm_layer(kind, moving_variance="unbiased")(gamma=0.1)
    model = keras.Model(inputs, layer(inputs))
    jit = keras.backend.backend() != "torch"  # torch.compile is not XLA
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit)
    x = np.concatenate(batches)
    model.fit(x, x, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert model.jit_compile is jit
    # The layer is first, so its statistics depend on the inputs only.
    mean, var = _pytorch_running_stats(batches)
    np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, var, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_config_and_keras_round_trip(kind, tmp_path):
    layer = norms.norm_layer(kind, moving_variance="unbiased")(
        gamma=0.3, name="norm"
    )
    config = layer.get_config()
    assert config["moving_variance"] == "unbiased"
    assert type(layer).from_config(config).get_config() == config

    x, x_next = _data((4, 5, 5, 3)), _data((4, 5, 5, 3), seed=7)
    inputs = keras.Input(shape=x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model(x, training=True)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    clone = loaded.get_layer("norm")
    assert type(clone) is type(layer)
    assert clone.moving_variance_convention == "unbiased"
    np.testing.assert_array_equal(loaded(x_next), model(x_next))
    loaded(x_next, training=True)
    _, var = _pytorch_running_stats([x, x_next])
    np.testing.assert_allclose(clone.moving_variance, var, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_rejects_a_bad_moving_variance(kind):
    factory = norms.norm_layer(kind)
    with pytest.raises(
        ValueError,
        match=r"one of biased, unbiased\. Received: moving_variance='Unbiased'",
    ):
        factory(gamma=0.1, moving_variance="Unbiased")
    with pytest.raises(ValueError, match="Received: moving_variance=True"):
        factory(gamma=0.1, moving_variance=True)
