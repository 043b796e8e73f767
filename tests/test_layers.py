"""batch_norm and InputBatchNorm against the formulas of Sections 3.1-3.4."""

import keras
import numpy as np
import pytest

import keras_bninit as kb


def _np_bn(x, gamma, beta, eps=1e-5):
    """Section 3.1: per channel (last axis) over all other axes, biased var."""
    axes = tuple(range(x.ndim - 1))
    mu = x.mean(axis=axes)
    var = ((x - mu) ** 2).mean(axis=axes)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta, mu, var


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return (rng.normal(2.0, 3.0, (6, 5, 5, 4))).astype("float32")


def test_batch_norm_is_stock_layer_with_paper_settings():
    layer = kb.batch_norm(0.1)
    assert type(layer) is keras.layers.BatchNormalization
    assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    layer.build((None, 3))
    np.testing.assert_array_equal(layer.gamma.numpy(), np.float32([0.1] * 3))
    np.testing.assert_array_equal(layer.beta.numpy(), [0.0] * 3)


def test_batch_norm_forward_and_running_stats(batch):
    layer = kb.batch_norm(0.25)
    y = keras.ops.convert_to_numpy(layer(batch, training=True))
    ref, mu, var = _np_bn(batch, 0.25, 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    # running = 0.9 * running + 0.1 * batch (Keras stores the biased var).
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), 0.9 + 0.1 * var, rtol=1e-5
    )
    # Inference uses the running statistics.
    y_inf = keras.ops.convert_to_numpy(layer(batch, training=False))
    mm, mv = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    np.testing.assert_allclose(
        y_inf, 0.25 * (batch - mm) / np.sqrt(mv + 1e-5), rtol=1e-4, atol=1e-5
    )


def test_batch_norm_kwargs_pass_through():
    layer = kb.batch_norm(0.5, axis=1, name="bn7", momentum=0.99)
    assert layer.axis == 1 and layer.name == "bn7" and layer.momentum == 0.99


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "a"])
def test_batch_norm_rejects_bad_gamma(bad):
    with pytest.raises(ValueError, match=r"gamma.*> 0.*Received: gamma="):
        kb.batch_norm(bad)


def test_batch_norm_rejects_bool_and_gamma_initializer():
    with pytest.raises(ValueError, match="gamma=True"):
        kb.batch_norm(True)
    with pytest.raises(ValueError, match="gamma_initializer"):
        kb.batch_norm(0.1, gamma_initializer="ones")


def test_input_batch_norm_forward_no_shift(batch):
    layer = kb.InputBatchNorm(gamma=0.1)
    y = keras.ops.convert_to_numpy(layer(batch, training=True))
    # Section 3.4: scale c * 0.58, no shift, one trainable parameter per
    # channel.
    np.testing.assert_allclose(layer.gamma.numpy(), [0.058] * 4, rtol=1e-6)
    assert layer.beta is None
    assert sum(int(np.prod(w.shape)) for w in layer.trainable_weights) == 4
    ref, mu, var = _np_bn(batch, 0.058, 0.0)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mu, rtol=1e-5)
    assert layer.momentum == 0.9 and layer.epsilon == 1e-5


def test_input_batch_norm_activation_std_by_name():
    layer = kb.InputBatchNorm(gamma=0.5, activation_std="relu")
    layer.build((None, 3))
    expected = 0.5 * np.sqrt(0.5 - 1 / (2 * np.pi))
    np.testing.assert_allclose(layer.gamma.numpy(), [expected] * 3, rtol=1e-6)


def test_input_batch_norm_config_and_keras_round_trip(tmp_path, batch):
    layer = kb.InputBatchNorm(gamma=0.2, activation_std="gelu", name="inbn")
    config = layer.get_config()
    assert config["gamma"] == 0.2 and config["activation_std"] == "gelu"
    assert "center" not in config and "gamma_initializer" not in config
    clone = kb.InputBatchNorm.from_config(config)
    assert clone.get_config() == config

    inputs = keras.Input((5, 5, 4))
    model = keras.Model(inputs, layer(inputs))
    model(batch, training=True)  # moves the running statistics
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.layers[-1], kb.InputBatchNorm)
    np.testing.assert_array_equal(
        model.predict(batch, verbose=0), loaded.predict(batch, verbose=0)
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"center": True}, "center"),
        ({"gamma_initializer": "ones"}, "gamma_initializer"),
        ({"beta_initializer": "ones"}, "beta_initializer"),
        ({"gamma": -0.1}, "gamma=-0.1"),
        ({"activation_std": "nonsense"}, "nonsense"),
        ({"activation_std": 0}, "activation_std=0"),
    ],
)
def test_input_batch_norm_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.InputBatchNorm(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epsilon": 0.0}, r"`epsilon` must be a finite real number > 0\. "),
        ({"epsilon": -1e-5}, r"epsilon=-1e-05"),
        ({"momentum": 1.5}, r"`momentum` must be a real number in \[0, 1\]"),
        ({"momentum": -0.1}, r"momentum=-0.1"),
        ({"momentum": "fast"}, r"momentum='fast'"),
        ({"axis": 1.5}, r"`axis` must be an integer .* axis=1.5"),
        ({"axis": True}, r"axis=True"),
    ],
)
def test_input_batch_norm_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.InputBatchNorm(0.1, **kwargs)


def test_input_batch_norm_axis_out_of_range():
    layer = kb.InputBatchNorm(0.1, axis=4)
    with pytest.raises(ValueError, match=r"\[-4, 4\) for inputs of rank 4"):
        layer(np.zeros((2, 3, 3, 3), np.float32))
    for ok in (0.0, 1.0):
        kb.InputBatchNorm(0.1, momentum=ok)
