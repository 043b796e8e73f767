"""retrofit on keras.applications, nested and subclassed models."""

import keras
import numpy as np
import pytest

import keras_bninit as kb

X = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")


def _check_bns(model, gamma):
    bns = kb.batch_norm_layers(model)
    assert bns
    for bn in bns:
        expected = gamma * (
            bn.activation_std_value if isinstance(bn, kb.InputBatchNorm) else 1
        )
        np.testing.assert_allclose(bn.gamma.numpy(), expected, rtol=1e-6)
        if bn.center:
            np.testing.assert_array_equal(bn.beta.numpy(), 0.0)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)
    return bns


@pytest.fixture(scope="module")
def mobilenet():
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10, alpha=0.35
    )


def test_resnet50_every_bn_reset():
    model = keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), classes=10
    )
    n_bn = sum(
        isinstance(layer, keras.layers.BatchNormalization)
        for layer in model.layers
    )
    new = kb.retrofit(model, gamma=0.1)
    bns = _check_bns(new, 0.1)
    assert len(bns) == n_bn + 1 == 54
    first = new.layers[1]
    assert isinstance(first, kb.InputBatchNorm)
    np.testing.assert_allclose(first.gamma.numpy(), [0.058] * 3, rtol=1e-6)
    assert new.count_params() == model.count_params() + 3 + 6


def test_mobilenet_round_trips_and_original_keeps_working(mobilenet, tmp_path):
    new = kb.retrofit(mobilenet, gamma=0.25, activation_std="relu6")
    _check_bns(new, 0.25)
    # The original shares the layers and still runs; the new model is the
    # original applied to the input-normalized images.
    inbn = new.get_layer("input_bn")
    np.testing.assert_allclose(
        new.predict(X, verbose=0),
        mobilenet.predict(inbn(X, training=False), verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
    expected = new.predict(X, verbose=0)
    new.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(
        loaded.predict(X, verbose=0), expected, rtol=1e-6
    )
    if keras.backend.backend() != "tensorflow":
        return  # SavedModel export is a TensorFlow-backend feature
    import tensorflow as tf

    new.export(tmp_path / "saved", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(X).numpy(), expected, rtol=1e-5)


def test_nested_and_subclassed_models():
    class Block(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x, training=None):
            return self.bn(self.conv(x), training=training)

    block = Block()
    block(X)  # builds it
    with pytest.raises(ValueError, match="input_shape"):
        kb.retrofit(block)
    new = kb.retrofit(block, gamma=0.5, input_shape=(32, 32, 3))
    _check_bns(new, 0.5)
    assert new(X).shape == (4, 30, 30, 4)

    seq = keras.Sequential(
        [keras.Input((32, 32, 3)), block, keras.layers.BatchNormalization()]
    )
    assert kb.retrofit(seq, gamma=0.3, input_bn=False) is seq
    assert len(_check_bns(seq, 0.3)) == 2


def test_training_after_retrofit_uses_param_groups(mobilenet):
    new = kb.retrofit(mobilenet, gamma=0.1)
    opt = kb.ParamGroupOptimizer(keras.optimizers.SGD(0.1, momentum=0.9))
    new.compile(opt, keras.losses.SparseCategoricalCrossentropy())
    new.fit(X, np.arange(4), epochs=1, verbose=0)
    scales = [v for v in new.trainable_variables if opt.group_of(v) == "scale"]
    assert len(scales) == len(kb.batch_norm_layers(new))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"gamma": 0}, "gamma=0"), ({"gamma": "x"}, "gamma='x'")],
)
def test_rejects_bad_gamma(mobilenet, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kb.retrofit(mobilenet, **kwargs)


def test_rejects_unbuilt_and_non_models():
    with pytest.raises(ValueError, match="not built"):
        kb.retrofit(keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="keras.Model"):
        kb.retrofit(keras.layers.Dense(2))
    a, b = keras.Input((4,)), keras.Input((4,))
    two = keras.Model([a, b], keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match="has 2"):
        kb.retrofit(two)


def test_rejects_alternative_formulations():
    inputs = keras.Input((4, 4, 2))
    outputs = kb.A2BatchNorm(rho=0.1, name="a2")(inputs)
    model = keras.Model(inputs, outputs)
    with pytest.raises(ValueError, match="'a2' is a A2BatchNorm"):
        kb.retrofit(model)
