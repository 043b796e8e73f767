"""update_bn_stats / PreciseBN against a NumPy forward pass.

The reference runs the network in training mode in NumPy (float64) and
pools each BN layer's batch moments into population statistics: the mean
of the batch means, and the mean of (biased batch variance + batch mean^2)
minus the squared mean, batches weighted by their size. That is what
precise BN stores (Wu & Johnson 2021; fvcore's population variance), and
equals the variance of all samples pooled, which the tests also check
directly. No TensorFlow import: these tests run on every Keras backend.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_bninit as kb
from keras_bninit import precise_bn

EPS = 1e-5


def _net(seed=0):
    """InputBatchNorm -> Dense -> BN -> ReLU -> [nested: Dense -> A1 BN]."""
    keras.utils.set_random_seed(seed)
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(4, name="dense2"),
            kb.A1BatchNorm(gamma=0.3, name="a1"),
        ],
        name="inner",
    )
    inputs = keras.Input((3,))
    x = kb.InputBatchNorm(0.5, name="input_bn")(inputs)
    x = keras.layers.Dense(5, name="dense1")(x)
    x = kb.batch_norm(0.2, name="bn")(x)
    x = keras.layers.ReLU()(x)
    return keras.Model(inputs, inner(x))


def _moments(x):
    return x.mean(axis=0), x.var(axis=0)  # biased, as Keras's BN


def _population(moments):
    """Pooled (mean, variance) from per-batch (mean, biased variance, size).

    The definition: sizes weight the batches; variance = weighted mean of
    (v + m^2) minus mean^2.
    """
    w = np.array([n for _, _, n in moments], np.float64)[:, None]
    m = np.array([m for m, _, _ in moments])
    v = np.array([v for _, v, _ in moments])
    mean = (w * m).sum(axis=0) / w.sum()
    return mean, (w * (v + m**2)).sum(axis=0) / w.sum() - mean**2


def _reference(model, batches):
    """Per BN layer (model order): its population (mean, variance)."""
    get = {
        w.path: keras.ops.convert_to_numpy(w).astype(np.float64)
        for w in model.weights
    }

    def weight(layer, name):
        (path,) = [p for p in get if p.split("/")[-2:] == [layer, name]]
        return get[path]

    stats = {name: [] for name in ("input_bn", "bn", "a1")}
    for x in batches:
        n = len(x)
        x = x.astype(np.float64)
        m, v = _moments(x)
        stats["input_bn"].append((m, v, n))
        x = weight("input_bn", "gamma") * (x - m) / np.sqrt(v + EPS)
        x = x @ weight("dense1", "kernel") + weight("dense1", "bias")
        m, v = _moments(x)
        stats["bn"].append((m, v, n))
        x = (x - m) / np.sqrt(v + EPS)
        x = weight("bn", "gamma") * x + weight("bn", "beta")
        x = np.maximum(x, 0.0)
        x = x @ weight("dense2", "kernel") + weight("dense2", "bias")
        stats["a1"].append((*_moments(x), n))
    return [_population(stats[name]) for name in ("input_bn", "bn", "a1")]


def _stats(model):
    return [
        (
            keras.ops.convert_to_numpy(layer.moving_mean),
            keras.ops.convert_to_numpy(layer.moving_variance),
        )
        for layer in kb.batch_norm_layers(model)
    ]


def _data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, 3)) * [1.0, 3.0, 0.2] + [2.0, -1.0, 0.5]
    ).astype("float32")


def test_matches_numpy_reference_nested_and_subclasses():
    model = _net()
    x = _data()
    batches = [x[i : i + 8] for i in range(0, 40, 8)]
    trainable = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    expected = _reference(model, batches)

    used = kb.update_bn_stats(model, x, num_batches=100, batch_size=8)

    assert used == 5
    assert [layer.name for layer in kb.batch_norm_layers(model)] == [
        "input_bn",
        "bn",
        "a1",
    ]
    for (mean, var), (ref_mean, ref_var) in zip(_stats(model), expected):
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, ref_var, rtol=1e-4, atol=1e-6)
    # Only the running statistics change; momentum comes back.
    for before, after in zip(trainable, model.trainable_weights):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))
    assert [layer.momentum for layer in kb.batch_norm_layers(model)] == [
        0.9,
        0.9,
        0.9,
    ]


def test_iterable_of_tuples_num_batches_and_population_variance():
    model = _net()
    x = _data(48)
    batches = [(x[i : i + 16], np.zeros(16)) for i in range(0, 48, 16)]
    expected = _reference(model, [b[0] for b in batches[:2]])

    assert kb.update_bn_stats(model, iter(batches), num_batches=2) == 2

    (mean, var), _, _ = _stats(model)
    np.testing.assert_allclose(mean, expected[0][0], rtol=1e-5)
    np.testing.assert_allclose(var, expected[0][1], rtol=1e-5)
    # The variance of the 32 examples, not the average of batch variances.
    np.testing.assert_allclose(var, x[:32].var(axis=0), rtol=1e-5)
    average = np.mean([x[:16].var(axis=0), x[16:32].var(axis=0)], axis=0)
    assert not np.allclose(var, average, rtol=1e-3)


def _shifted_images(sizes=(8, 8, 8, 8), offsets=(0.0, 3.0, -2.0, 5.0)):
    """Batches of (n, 4, 4, 3) images whose means differ strongly."""
    rng = np.random.default_rng(2)
    return [
        (rng.normal(size=(n, 4, 4, 3)) * [1.0, 0.5, 2.0] + offset).astype(
            "float32"
        )
        for n, offset in zip(sizes, offsets)
    ]


def _conv_bn(moving_variance=None):
    """One BN on (4, 4, 3) images: Keras's own layer by default, or
    `keras_bninit.BatchNormalization` keeping the given moving variance."""
    keras.utils.set_random_seed(0)
    if moving_variance is None:
        bn = keras.layers.BatchNormalization()
    else:
        bn = kb.BatchNormalization(moving_variance=moving_variance)
    return keras.Sequential([keras.Input((4, 4, 3)), bn])


@pytest.mark.parametrize(
    "sizes", [(8, 8, 8, 8), (8, 8, 8, 3)], ids=["equal", "partial_last"]
)
def test_population_statistics_of_batches_with_different_means(sizes):
    batches = _shifted_images(sizes)
    pooled = np.concatenate(batches).astype(np.float64)
    model = _conv_bn()

    assert kb.update_bn_stats(model, batches) == 4

    ((mean, var),) = _stats(model)
    # Per channel over examples and positions, as the layer normalizes.
    np.testing.assert_allclose(mean, pooled.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, pooled.var(axis=(0, 1, 2)), rtol=1e-4)
    # The spread of the batch means is most of it here: the plain average
    # of the batch variances is far smaller.
    average = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    assert np.all(var > 2 * average)
    assert model.layers[0].momentum == 0.99


def test_array_with_partial_last_batch_is_the_pooled_variance():
    x = np.concatenate(_shifted_images((8, 8, 8, 3)))
    model = _conv_bn()

    assert kb.update_bn_stats(model, x, batch_size=8) == 4

    ((mean, var),) = _stats(model)
    x = x.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-4)


@pytest.mark.parametrize("moving_variance", ["biased", "unbiased"])
def test_either_moving_variance_stores_the_pooled_biased_variance(
    moving_variance,
):
    """fvcore's estimator from each convention's batch variance.

    With n = examples x positions per batch, a layer keeping the unbiased
    batch variance u_b = v_b n / (n - 1) would be pooled as fvcore pools
    PyTorch's: mean_b((n - 1) / n u_b + m_b^2) - M^2, the biased variance
    of all samples pooled, as for the biased layer.
    """
    batches = [b.astype(np.float64) for b in _shifted_images()]
    n = 8 * 4 * 4
    means = np.array([b.mean(axis=(0, 1, 2)) for b in batches])
    unbiased = np.array([b.var(axis=(0, 1, 2), ddof=1) for b in batches])
    mean = means.mean(axis=0)
    reference = ((n - 1) / n * unbiased + means**2).mean(axis=0) - mean**2
    pooled = np.concatenate(batches).var(axis=(0, 1, 2))
    np.testing.assert_allclose(reference, pooled, rtol=1e-12)
    model = _conv_bn(moving_variance)
    layer = model.layers[0]

    assert kb.update_bn_stats(model, _shifted_images()) == 4

    ((moving_mean, moving_var),) = _stats(model)
    np.testing.assert_allclose(moving_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moving_var, reference, rtol=1e-4)
    # The layer's own settings come back: a training step afterwards
    # averages its own convention's batch variance in again.
    assert layer.momentum == 0.99
    assert layer.moving_variance_convention == moving_variance
    batch = batches[0]
    model(batch.astype("float32"), training=True)
    ddof = 1 if moving_variance == "unbiased" else 0
    expected = 0.99 * reference + 0.01 * batch.var(axis=(0, 1, 2), ddof=ddof)
    np.testing.assert_allclose(_stats(model)[0][1], expected, rtol=1e-4)


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="fvcore runs on PyTorch"
)
def test_matches_fvcore_update_bn_stats():
    """An unbiased layer (PyTorch's BN in Keras) gives what fvcore gives a
    PyTorch BN."""
    precise_bn = pytest.importorskip("fvcore.nn.precise_bn")
    import torch

    batches = _shifted_images((8, 8, 8, 3))
    model = _conv_bn("unbiased")
    kb.update_bn_stats(model, batches)

    bn = torch.nn.BatchNorm2d(3)
    bn.train()
    nchw = [torch.from_numpy(b.transpose(0, 3, 1, 2).copy()) for b in batches]
    precise_bn.update_bn_stats(bn, nchw, num_iters=len(nchw))

    ((mean, var),) = _stats(model)
    # fvcore stores the pooled biased variance, though PyTorch's
    # running_var is otherwise the unbiased one; so does update_bn_stats.
    np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-4)


def test_frozen_layer_and_models_without_bn_are_left_alone():
    model = _net()
    frozen = model.get_layer("bn")
    frozen.trainable = False
    before = keras.ops.convert_to_numpy(frozen.moving_mean)

    kb.update_bn_stats(model, _data(), batch_size=20)

    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(frozen.moving_mean), before
    )
    assert not np.allclose(_stats(model)[0][0], 0.0)  # input BN updated
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert kb.update_bn_stats(plain, _data(), batch_size=8) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_batches": 0}, "num_batches=0"),
        ({"num_batches": 2.5}, "num_batches=2.5"),
        ({}, "batch_size=None"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kb.update_bn_stats(_net(), _data(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_batches": 0}, "`num_batches` must be a positive integer"),
        ({"num_batches": True}, "num_batches=True"),
        ({"batch_size": 2.0}, "`batch_size` .* Received: batch_size=2.0"),
        # A bare array: refused here, not after the first epoch's training.
        ({}, r"`batch_size` is needed .* Received: data of shape \(40, 3\)"),
        ({"data": object()}, "must be a NumPy array .* Received: object"),
        ({"data": [np.zeros((2, 3))], "batch_size": 4}, "batch_size=4"),
    ],
)
def test_callback_rejects_bad_arguments_at_construction(kwargs, message):
    data = kwargs.pop("data", _data())
    with pytest.raises(ValueError, match=message) as caught:
        kb.PreciseBN(data, **kwargs)
    assert "\n" not in str(caught.value)


def test_a_callable_is_checked_when_called():
    precise = kb.PreciseBN(lambda epoch: _data(), batch_size=8)
    assert precise.batch_size == 8  # the epoch's data is not made here


def test_empty_data_and_batch_size_with_batches_are_rejected():
    with pytest.raises(ValueError, match="no batch"):
        kb.update_bn_stats(_net(), [])
    with pytest.raises(ValueError, match="batch_size=4"):
        kb.update_bn_stats(_net(), [_data()], batch_size=4)


# After training, weights are no longer round numbers and a GPU's float32
# matmuls (TF32 by default with JAX on an H200) agree with float64 to about
# 5e-5 absolute here; the EMA statistics differ from these by far more.
_TRAINED = {"rtol": 1e-3, "atol": 2e-4}


class _StatsAtValidation(keras.callbacks.Callback):
    """Records the running mean that validation starts with."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_test_begin(self, logs=None):
        layer = kb.batch_norm_layers(self.model)[1]
        self.seen.append(keras.ops.convert_to_numpy(layer.moving_mean))


def test_callback_recomputes_before_validation():
    model = _net()
    model.compile("sgd", "mse")
    x = _data(64)
    y = np.ones((64, 4), "float32")
    recorder = _StatsAtValidation()
    precise = kb.PreciseBN(x, num_batches=3, batch_size=16)

    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        validation_data=(x[:32], y[:32]),
        callbacks=[precise, recorder],
        verbose=0,
    )

    # Validation saw the statistics the callback computed from the final
    # weights (a second update on the same data gives the same numbers) ...
    final = _stats(model)
    expected = _reference(model, [x[0:16], x[16:32], x[32:48]])
    for (mean, var), (ref_mean, ref_var) in zip(final, expected):
        np.testing.assert_allclose(mean, ref_mean, **_TRAINED)
        np.testing.assert_allclose(var, ref_var, **_TRAINED)
    np.testing.assert_array_equal(recorder.seen[-1], final[1][0])
    assert len(recorder.seen) == 2
    # ... and the validation loss is the loss under those statistics.
    loss = model.evaluate(x[:32], y[:32], verbose=0)
    np.testing.assert_allclose(history.history["val_loss"][-1], loss, rtol=1e-5)


def test_callback_without_validation_updates_at_train_end_and_takes_epochs():
    model = _net()
    model.compile("sgd", "mse")
    x = _data(32)
    seen_epochs = []

    def data(epoch):
        seen_epochs.append(epoch)
        return [x[:16], x[16:]]

    model.fit(
        x,
        np.zeros((32, 4), "float32"),
        epochs=2,
        batch_size=16,
        callbacks=[kb.PreciseBN(data)],
        verbose=0,
    )

    assert seen_epochs == [1]  # once, for the final weights
    for (mean, var), (ref_mean, ref_var) in zip(
        _stats(model), _reference(model, [x[:16], x[16:]])
    ):
        np.testing.assert_allclose(mean, ref_mean, **_TRAINED)
        np.testing.assert_allclose(var, ref_var, **_TRAINED)


def test_former_name_works_and_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(precise_bn, "_WARNED", set())
    x = _data(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = kb.PreciseBNCallback(x, num_batches=np.int64(2), batch_size=16)
        kb.PreciseBNCallback(x, batch_size=16)
        kb.PreciseBN(x, batch_size=16)
    (warning,) = [w for w in caught if w.category is DeprecationWarning]
    assert "use keras_bninit.PreciseBN" in str(warning.message)
    assert warning.filename == __file__  # points at the caller
    assert isinstance(old, kb.PreciseBN) and old.num_batches == 2
    # It is the same callback: the statistics of the two batches.
    model = _net()
    model.compile("sgd", "mse")
    zeros = np.zeros((32, 4), "float32")
    model.fit(x, zeros, batch_size=16, callbacks=[old], verbose=0)
    for (mean, var), (ref_mean, ref_var) in zip(
        _stats(model), _reference(model, [x[:16], x[16:]])
    ):
        np.testing.assert_allclose(mean, ref_mean, **_TRAINED)
        np.testing.assert_allclose(var, ref_var, **_TRAINED)
