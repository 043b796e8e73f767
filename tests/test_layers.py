"""batch_norm and InputBatchNorm against the formulas of Sections 3.1-3.4,
and every normalization layer kind through the checks of `_layer_checks`."""

import functools

import keras
import numpy as np
import pytest
from _layer_checks import CHECKS, check_norm_layer, data, pytorch_running_stats

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


def test_input_batch_norm_config_names_its_own_arguments():
    layer = kb.InputBatchNorm(gamma=0.2, activation_std="gelu", name="inbn")
    config = layer.get_config()
    assert config["gamma"] == 0.2 and config["activation_std"] == "gelu"
    assert "center" not in config and "gamma_initializer" not in config


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


# ------------------------------------------- moving variance (Section 3.1)


def _batches(count=4, shape=(6, 5, 5, 4)):
    return [data(shape, seed=5 + s) for s in range(count)]


# (layer maker with a given moving variance, gamma of its normalization)
MAKERS = {
    "batch_norm": (lambda mv: kb.batch_norm(0.25, moving_variance=mv), 0.25),
    "input_bn": (
        lambda mv: kb.InputBatchNorm(0.25, 0.5, moving_variance=mv),
        0.125,
    ),
}


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_unbiased_running_stats_are_pytorchs(maker):
    make, gamma = MAKERS[maker]
    unbiased, biased = make("unbiased"), make("biased")
    assert isinstance(unbiased, kb.BatchNormalization)
    assert unbiased.moving_variance_convention == "unbiased"
    batches = _batches()
    for x in batches:
        y = keras.ops.convert_to_numpy(unbiased(x, training=True))
        # The normalization still uses the biased batch variance: the
        # outputs are the biased layer's and Section 3.1's.
        np.testing.assert_array_equal(
            y, keras.ops.convert_to_numpy(biased(x, training=True))
        )
        np.testing.assert_allclose(
            y, _np_bn(x, gamma, 0.0)[0], rtol=1e-4, atol=1e-5
        )
    mean, var = pytorch_running_stats(batches)
    np.testing.assert_allclose(unbiased.moving_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(unbiased.moving_variance.numpy(), var, rtol=1e-5)
    # The biased layer keeps Keras's update (n = 150 values per channel).
    _, keras_var = pytorch_running_stats(batches, ddof=0)
    np.testing.assert_allclose(
        biased.moving_variance.numpy(), keras_var, rtol=1e-5
    )
    assert not np.allclose(keras_var, var, rtol=1e-3)
    # Inference normalizes with the running statistics, whichever they are.
    x = batches[0]
    y = keras.ops.convert_to_numpy(unbiased(x, training=False))
    np.testing.assert_allclose(
        y, gamma * (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
    )


def test_unbiased_with_a_mask_counts_the_unmasked_values():
    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 2.0, (4, 7, 3)).astype("float32")
    mask = rng.random((4, 7)) < 0.6
    layer = kb.batch_norm(1.0, moving_variance="unbiased")
    layer(x, training=True, mask=mask)
    kept = x[mask].astype(np.float64)  # (count, 3)
    np.testing.assert_allclose(
        layer.moving_variance.numpy(),
        0.9 + 0.1 * kept.var(axis=0, ddof=1),
        rtol=1e-5,
    )


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="compares with torch.nn"
)
def test_unbiased_equals_pytorchs_batch_norm():
    import torch

    batches = _batches()
    layer = kb.batch_norm(1.0, moving_variance="unbiased")
    reference = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5).double()
    reference.train()
    for x in batches:
        y = keras.ops.convert_to_numpy(layer(x, training=True))
        nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
        y_ref = reference(nchw).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        layer.moving_mean.numpy(), reference.running_mean.numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        layer.moving_variance.numpy(), reference.running_var.numpy(), rtol=1e-5
    )


def test_moving_variance_picks_the_class():
    assert type(kb.batch_norm(moving_variance="biased")) is (
        keras.layers.BatchNormalization
    )
    layer = kb.batch_norm(0.3, moving_variance="unbiased", name="bn")
    assert type(layer) is kb.BatchNormalization
    assert layer.momentum == 0.9 and layer.epsilon == 1e-5
    # The class alone keeps Keras's defaults and convention.
    plain = kb.BatchNormalization()
    assert plain.momentum == 0.99 and plain.moving_variance_convention == (
        "biased"
    )


@pytest.mark.parametrize("key", ["renorm", "synchronized"])
def test_unbiased_refuses_renorm_and_synchronized(key):
    with pytest.raises(ValueError, match=rf"`{key}` .*Received: {key}=True"):
        kb.batch_norm(0.1, moving_variance="unbiased", **{key: True})


# ------------------------------------------- every normalization layer kind

C = 0.5  # the initial value of the parameter that carries the BN scale init
# kind -> factory(gamma=c, **kwargs): this module's layers and every
# formulation of `keras_bninit.NORM_LAYERS`. A new kind is one more line.
KINDS = {
    "batch_norm": kb.batch_norm,
    "InputBatchNorm": functools.partial(kb.InputBatchNorm, activation_std=1.0),
    "BatchNormalization(unbiased)": lambda gamma, **kwargs: (
        kb.BatchNormalization(
            **{
                "moving_variance": "unbiased",
                "gamma_initializer": keras.initializers.Constant(gamma),
                **kwargs,
            }
        )
    ),
    **kb.NORM_LAYERS,
}
# The parameter that carries c, where it is not `gamma` (Section 4.4).
SCALE_PARAMETER = {"a2": "rho"}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_norm_layer(kind, check):
    check_norm_layer(
        functools.partial(KINDS[kind], gamma=C),
        check,
        c=C,
        scale=SCALE_PARAMETER.get(kind, "gamma"),
    )
