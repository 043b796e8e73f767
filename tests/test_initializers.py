"""Initial weights from the seed with NumPy (keras_bninit.initializers):
Keras's distributions, the same values on every backend, for every model.
"""

import json
import math
import textwrap

import keras
import numpy as np
import pytest
from _backend import BACKEND, run_python, to_numpy

import keras_bninit as kb
from keras_bninit import models
from keras_bninit.initializers import VarianceScaling, generator
from keras_bninit.models import _layers

C = 0.5  # the BN scale constant of the models built here
SIZE = (16, 16, 3)  # the smallest input every model takes (stride 8)


def _values(initializer, shape):
    return to_numpy(initializer(shape))


# ---------------------------------------------------------------------------
# The initializer
# ---------------------------------------------------------------------------


def test_values_are_a_function_of_seed_key_and_index():
    def init(**kwargs):
        args = {"scale": 2.0, "key": "a/kernel", "seed": 7, "index": 0}
        return VarianceScaling(**{**args, **kwargs})

    shape = (3, 3, 4, 8)
    first = _values(init(), shape)
    np.testing.assert_array_equal(_values(init(), shape), first)
    initializer = init()
    np.testing.assert_array_equal(
        _values(initializer, shape), _values(initializer, shape)
    )
    for other in ({"seed": 8}, {"key": "b/kernel"}, {"index": 1}):
        assert not np.array_equal(_values(init(**other), shape), first)
    # Truncated normal (the default): the first draws within 2 std stay,
    # scaled to std sqrt(scale / fan_in); the others are drawn again.
    expected = generator(7, "a/kernel", 0).standard_normal(shape)
    inside = np.abs(expected) <= 2.0
    scale = math.sqrt(2.0 / (3 * 3 * 4)) / 0.87962566103423978
    np.testing.assert_allclose(
        first[inside], (expected * scale)[inside], rtol=1e-6, atol=1e-7
    )


# (shape, old Keras initializer arguments): the zoo's three initializers
# on the shapes they meet, and the other modes and distributions.
_CASES = [
    (
        (3, 3, 64, 128),
        dict(scale=2.0, mode="fan_in", dist="untruncated_normal"),
    ),
    (
        (3, 3, 8192, 1),
        dict(scale=2.0, mode="fan_out", dist="untruncated_normal"),
    ),
    ((1280, 64), dict(scale=1 / 3, mode="fan_in", dist="uniform")),
    ((7, 7, 3, 2048), dict(scale=1.0, mode="fan_avg", dist="truncated_normal")),
    ((256, 300), dict(scale=0.5, mode="fan_out", dist="uniform")),
]


def _moments(values):
    values = np.asarray(values, np.float64).ravel()
    mean, std = values.mean(), values.std()
    kurtosis = np.mean(((values - mean) / std) ** 4)
    return mean, std, kurtosis, np.abs(values).max()


@pytest.mark.parametrize("shape, args", _CASES)
def test_distributions_match_keras(shape, args):
    """Mean, std, kurtosis and range against the old Keras initializer's
    samples and against the formula, within sampling error (n >= 73,728:
    the std's relative error is about 0.3 %, the kurtosis's about 0.02)."""
    keras_init = keras.initializers.VarianceScaling(
        args["scale"], args["mode"], args["dist"], seed=0
    )
    ours = VarianceScaling(
        args["scale"], args["mode"], args["dist"], key="w", seed=1
    )
    old, new = (
        _moments(_values(keras_init, shape)),
        _moments(ours.values(shape)),
    )
    fan_in, fan_out = kb.initializers.compute_fans(shape)
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(
        args["mode"], (fan_in + fan_out) / 2
    )
    std = math.sqrt(args["scale"] / fan)
    assert abs(new[0]) < 0.02 * std and abs(old[0]) < 0.02 * std
    assert new[1] == pytest.approx(std, rel=0.02)
    assert new[1] == pytest.approx(old[1], rel=0.02)
    assert new[2] == pytest.approx(old[2], abs=0.1)  # 1.8 uniform, 3 normal
    if args["dist"] == "uniform":
        assert new[3] <= math.sqrt(3) * std
        assert new[3] == pytest.approx(old[3], rel=0.01)
    elif args["dist"] == "truncated_normal":
        # Keras on PyTorch keeps a value beyond 2 std when four draws in a
        # row fall there; on TensorFlow and JAX its maximum is this bound.
        bound = 2 * std / 0.87962566103423978
        assert new[3] <= bound
        assert new[3] == pytest.approx(bound, rel=0.01)


def test_compute_fans_in_keras_layout():
    fans = kb.initializers.compute_fans
    assert fans(()) == (1, 1)
    assert fans((5,)) == (5, 5)
    assert fans((64, 10)) == (64, 10)  # dense: (inputs, outputs)
    assert fans((3, 3, 16, 32)) == (144, 288)  # conv: (k, k, in, out)
    assert fans((3, 3, 96, 1)) == (864, 9)  # depthwise: fan_out = k * k


def test_the_zoos_initializers_keep_section_4_1():
    """Kaiming normal fan-in for convs, fan-in k*k for depthwise kernels,
    PyTorch's U(+-1/sqrt(fan_in)) for the classifier."""
    conv = _layers.conv_kernel_initializer("c/kernel").values((3, 3, 64, 128))
    assert conv.std() == pytest.approx(math.sqrt(2 / 576), rel=0.02)
    assert _moments(conv)[2] == pytest.approx(3.0, abs=0.1)
    depthwise = _layers.depthwise_kernel_initializer("d/kernel")
    values = depthwise.values((3, 3, 4096, 1))
    assert values.std() == pytest.approx(math.sqrt(2 / 9), rel=0.02)
    dense = _layers.dense_kernel_initializer("fc/kernel").values((512, 200))
    assert np.abs(dense).max() <= 1 / math.sqrt(512)
    assert dense.std() == pytest.approx(1 / math.sqrt(3 * 512), rel=0.02)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_dtypes(dtype):
    if dtype == "float64" and BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX without x64 has no float64")
    init = VarianceScaling(key="w", seed=3)
    values = init((4, 5), dtype=dtype)
    assert keras.backend.standardize_dtype(values.dtype) == dtype
    np.testing.assert_allclose(
        np.asarray(to_numpy(values), np.float64),
        init.values((4, 5)),
        rtol=1e-2,
    )


def test_config_round_trip_keeps_the_values():
    kb.set_seed(2, deterministic=False)
    init = VarianceScaling(2.0, "fan_in", "untruncated_normal", key="k")
    config = keras.saving.serialize_keras_object(init)
    assert config["registered_name"] == "keras_bninit>VarianceScaling"
    assert config["config"]["seed"] == kb.make_complex(2)
    loaded = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(config))
    )
    assert isinstance(loaded, VarianceScaling)
    assert loaded.get_config() == init.get_config()
    np.testing.assert_array_equal(
        _values(loaded, (6, 7)), _values(init, (6, 7))
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 0}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"mode": "fan"}, "mode"),
        ({"distribution": "gaussian"}, "distribution"),
        ({"key": 3}, "key"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 1, "index": -2}, "index"),
        ({"index": 1}, "index"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Received: .*{match}"):
        VarianceScaling(**kwargs)


# ---------------------------------------------------------------------------
# Seeds and models
# ---------------------------------------------------------------------------


def _build(name, seed=1):
    if seed is not None:
        kb.set_seed(seed, deterministic=False)
    return models.build(
        name, num_classes=10, input_shape=SIZE, bn_gamma=C, input_bn=True
    )


def _weights(model):
    return {v.path: to_numpy(v) for v in model.weights}


def _expected(layer, variable, seed):
    """A weight of the zoo recomputed with NumPy from the paper's rules
    (Section 4.1) and the stream of (seed, path, draw 0)."""
    shape, name = tuple(variable.shape), variable.path.split("/")[-1]
    if isinstance(layer, kb.InputBatchNorm) and name == "gamma":
        return np.full(shape, 0.58 * C)
    if isinstance(layer, keras.layers.BatchNormalization):
        fill = {"gamma": C, "beta": 0.0, "moving_mean": 0.0}
        return np.full(shape, fill.get(name, 1.0))
    if name == "bias":
        return np.zeros(shape)
    rng = generator(seed, variable.path, 0)
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (k, k, C, 1)
        return rng.standard_normal(shape) * math.sqrt(2 / (shape[0] ** 2))
    if isinstance(layer, keras.layers.Conv2D):  # (k, k, in / groups, out)
        return rng.standard_normal(shape) * math.sqrt(2 / np.prod(shape[:3]))
    assert isinstance(layer, keras.layers.Dense), variable.path
    bound = 1 / math.sqrt(shape[0])
    return rng.uniform(-bound, bound, shape)


@pytest.mark.parametrize("name", models.available())
def test_every_model_is_the_numpy_recomputation(name):
    """Each weight equals NumPy's values for (make_complex(1), its path):
    no backend generator is involved, so every backend builds this model."""
    model = _build(name)
    seed = kb.make_complex(1)
    count = 0
    for layer in model.layers:
        for variable in layer.weights:
            np.testing.assert_allclose(
                to_numpy(variable),
                _expected(layer, variable, seed),
                rtol=0,
                atol=1e-6,
                err_msg=variable.path,
            )
            count += 1
    assert count == len(model.weights)


# Each backend's run compares itself with the next one, so CI's three runs
# cover every pair; each model family and kind of weight is in the set.
_NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}
_CROSS_MODELS = ("resnet8", "mobilenet_v2", "repvgg_a0")
_DUMP = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras, keras_bninit, models

    weights = {}
    for name in sys.argv[2:]:
        keras_bninit.set_seed(1, deterministic=False)
        model = models.build(name, num_classes=10, input_shape=(16, 16, 3),
                             bn_gamma=0.5, input_bn=True)
        for v in model.weights:
            weights[f"{name}:{v.path}"] = keras.ops.convert_to_numpy(v)
    np.savez(sys.argv[1], backend=keras.backend.backend(), **weights)
    """
)


def test_initial_weights_equal_another_backends(tmp_path):
    other = _NEXT_BACKEND[BACKEND]
    pytest.importorskip(other)
    path = tmp_path / "weights.npz"
    out = run_python("-c", _DUMP, path, *_CROSS_MODELS, backend=other)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = np.load(path)
    assert str(theirs["backend"]) == other
    ours = {
        f"{name}:{path}": value
        for name in _CROSS_MODELS
        for path, value in _weights(_build(name)).items()
    }
    assert sorted(ours) == sorted(k for k in theirs.files if k != "backend")
    for key, value in ours.items():
        np.testing.assert_allclose(
            value, theirs[key], rtol=0, atol=1e-6, err_msg=key
        )


def test_same_seed_same_weights_other_seed_or_next_model_differ():
    first = _weights(_build("resnet8", seed=1))
    again = _weights(_build("resnet8", seed=1))
    second_model = _weights(_build("resnet8", seed=None))  # no new set_seed
    other_seed = _weights(_build("resnet8", seed=2))
    assert first.keys() == again.keys()
    for path, value in first.items():
        np.testing.assert_array_equal(again[path], value)
    kernel = "layer2_0_conv1/kernel"
    assert not np.array_equal(second_model[kernel], first[kernel])
    assert not np.array_equal(other_seed[kernel], first[kernel])
    assert not np.array_equal(other_seed[kernel], second_model[kernel])


def test_a_clone_starts_from_the_same_weights():
    model = _build("resnet8")
    clone = keras.models.clone_model(model)
    for a, b in zip(model.weights, clone.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_users_own_layers_keep_keras_initializers():
    """set_seed changes no Keras layer made outside the zoo: a plain Dense
    draws from Keras's generator exactly as after keras.utils's seed."""

    def dense_kernel():
        layer = keras.layers.Dense(4)
        layer.build((None, 3))
        return to_numpy(layer.kernel)

    kb.set_seed(5, deterministic=False)
    ours = dense_kernel()
    keras.utils.set_random_seed(kb.make_complex(5))
    np.testing.assert_array_equal(dense_kernel(), ours)
    assert isinstance(
        keras.layers.Dense(4).kernel_initializer,
        keras.initializers.GlorotUniform,
    )
