"""`create_model` / `list_models`: keras.applications' include_top and
pooling, weights from a local .keras, .weights.h5 or PyTorch state_dict
file, and the install names (`keras_bninit.models`, a checkout's `models`).
"""

import sys
import warnings

import keras
import numpy as np
import pytest
from _backend import to_numpy

import keras_bninit
from keras_bninit import models
from keras_bninit.models import create_model, list_models

SHAPE = (16, 16, 3)
X = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype("float32")


def _model(name="resnet8", seed=1, **kwargs):
    # Seeds the initial weights; no op determinism, which the module-scoped
    # fixture below would leave on for later tests (Keras then skips XLA).
    keras_bninit.set_seed(seed, deterministic=False)
    kwargs.setdefault("num_classes", 10)
    return create_model(name, input_shape=SHAPE, **kwargs)


def _predict(model):
    return to_numpy(model(X, training=False))


def _weights(model):
    return {
        layer.name: [to_numpy(w) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }


def _user_warnings(caught):
    return [str(w.message) for w in caught if w.category is UserWarning]


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_the_checkout_name_is_the_installed_package():
    import models as checkout
    import models.resnet

    assert checkout is keras_bninit.models
    assert models.resnet is sys.modules["keras_bninit.models.resnet"]
    assert checkout.create_model is create_model


def test_list_models_filters_and_keeps_the_old_names():
    assert list_models("resnet1*") == [
        "resnet101",
        "resnet110",
        "resnet152",
        "resnet18",
    ]
    assert "mobilenet_v2" in list_models() and "repvgg_a0" in list_models()
    assert models.available is list_models
    assert models.build("resnet8", input_shape=SHAPE).name == "resnet8"
    with pytest.raises(ValueError, match=r"pattern=3"):
        list_models(3)


# ---------------------------------------------------------------------------
# include_top and pooling
# ---------------------------------------------------------------------------


def test_without_the_top_the_model_ends_in_the_features():
    full = _model()
    feature_map = _model(include_top=False)
    average = _model(include_top=False, pooling="avg")
    maximum = _model(include_top=False, pooling="max")
    assert feature_map.output_shape == (None, 4, 4, 64)
    assert average.output_shape == maximum.output_shape == (None, 64)
    # The same seed builds the same body: the features are the full model's.
    body = keras.Model(full.input, full.get_layer("avgpool").output)
    maps = _predict(feature_map)
    np.testing.assert_allclose(_predict(average), _predict(body), atol=1e-6)
    np.testing.assert_allclose(
        _predict(average), maps.mean(axis=(1, 2)), atol=1e-5
    )
    np.testing.assert_allclose(_predict(maximum), maps.max(axis=(1, 2)))
    assert not any(
        isinstance(layer, keras.layers.Dense) for layer in maximum.layers
    )


def test_pooling_is_checked():
    with pytest.raises(ValueError, match=r"needs include_top=False"):
        _model(pooling="max")
    with pytest.raises(
        ValueError,
        match=r"`pooling` must be one of None, avg, max. "
        r"Received: pooling='mean'",
    ):
        _model(include_top=False, pooling="mean")
    with pytest.raises(ValueError, match=r"include_top.*'no'"):
        _model(include_top="no")
    assert _model(pooling="avg").output_shape == (None, 10)


# ---------------------------------------------------------------------------
# pretrained
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained-looking resnet8 saved three ways, and its predictions."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("pretrained")
    source = _model(seed=7)
    # Move every weight off its initial value, BN statistics included.
    rng = np.random.default_rng(3)
    for variable in source.weights:
        value = to_numpy(variable)
        variable.assign(value + rng.uniform(0.01, 0.1, value.shape))
    paths = {
        "keras": str(folder / "source.keras"),
        "h5": str(folder / "source.weights.h5"),
        "torch": str(folder / "source.pth"),
    }
    source.save(paths["keras"])
    source.save_weights(paths["h5"])
    state = models.torch_state_dict(source)
    torch.save(
        {
            k: torch.from_numpy(np.ascontiguousarray(v))
            for k, v in state.items()
        },
        paths["torch"],
    )
    return paths, _predict(source), _weights(source)


@pytest.mark.parametrize("kind", ["keras", "h5", "torch"])
def test_pretrained_reproduces_the_saved_model(saved, kind):
    paths, predictions, _ = saved
    model = _model(seed=2, pretrained=paths[kind])
    np.testing.assert_allclose(_predict(model), predictions, atol=1e-5)


@pytest.mark.parametrize("kind", ["keras", "h5", "torch"])
def test_pretrained_features_without_the_top(saved, kind):
    paths, _, weights = saved
    model = _model(
        seed=2, pretrained=paths[kind], include_top=False, pooling="avg"
    )
    loaded = _weights(model)
    assert "fc" not in loaded and set(loaded) == set(weights) - {"fc"}
    for name, arrays in loaded.items():
        for got, expected in zip(arrays, weights[name]):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_another_class_count_keeps_a_fresh_classifier(saved, kind):
    paths, _, weights = saved
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _model(seed=2, pretrained=paths[kind], num_classes=5)
    assert _user_warnings(caught) == [
        f"resnet8: the classifier ['fc'] keeps its initial weights "
        f"({paths[kind]!r} has another number of classes or none)."
    ]
    fresh = _weights(_model(seed=2, num_classes=5))
    loaded = _weights(model)
    for got, expected in zip(loaded.pop("fc"), fresh["fc"]):
        np.testing.assert_array_equal(got, expected)
    for name, arrays in loaded.items():
        for got, expected in zip(arrays, weights[name]):
            np.testing.assert_array_equal(got, expected)


def test_weights_h5_needs_the_saved_arguments(saved):
    paths, _, _ = saved
    with pytest.raises(ValueError, match=r"does not fit resnet8.*num_classes"):
        _model(pretrained=paths["h5"], num_classes=5)
    with pytest.raises(ValueError, match=r"does not fit resnet20"):
        _model("resnet20", pretrained=paths["h5"])
    with pytest.raises(ValueError, match=r"through create_model"):
        models.load_pretrained(_model(), paths["h5"])


@pytest.mark.parametrize("kind", ["keras", "torch"])
def test_another_architecture_is_refused_and_nothing_assigned(saved, kind):
    paths, _, _ = saved
    bigger = _model("resnet20")
    before = _weights(bigger)
    with pytest.raises(
        ValueError,
        match=r"does not fit resnet20: layer 'layer1_1_conv1' needs weights "
        r"of shapes \[\(3, 3, 16, 16\)\]; the file has none",
    ):
        models.load_pretrained(bigger, paths[kind])
    after = _weights(bigger)
    for name in before:
        np.testing.assert_array_equal(after[name][0], before[name][0])


def test_a_file_with_more_layers_is_refused(tmp_path):
    path = str(tmp_path / "resnet20.keras")
    _model("resnet20").save(path)
    with pytest.raises(
        ValueError, match=r"holds layers resnet8 does not have, e.g. \['lay"
    ):
        _model(pretrained=path)


def test_the_input_bn_starts_fresh_on_weights_without_it(saved):
    paths, _, weights = saved
    model = _model(
        seed=2, pretrained=paths["keras"], input_bn=True, bn_gamma=0.1
    )
    loaded = _weights(model)
    gamma = loaded.pop("input_bn")[0]
    np.testing.assert_allclose(gamma, np.full(3, 0.1 * 0.58), rtol=1e-6)
    assert set(loaded) == set(weights)


def test_wrapped_torch_checkpoints_are_unwrapped(saved, tmp_path):
    torch = pytest.importorskip("torch")
    paths, predictions, _ = saved
    state = torch.load(paths["torch"], weights_only=True)
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in state.items()},
    }
    path = str(tmp_path / "checkpoint.pth")
    torch.save(wrapped, path)
    model = _model(seed=2, pretrained=path)
    np.testing.assert_allclose(_predict(model), predictions, atol=1e-5)


def test_bad_files_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"'nope.pth' does not exist"):
        _model(pretrained="nope.pth")
    with pytest.raises(ValueError, match=r"Received: pretrained=True"):
        _model(pretrained=True)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    pytest.importorskip("torch")
    with pytest.raises(
        ValueError, match=r"Cannot read .*junk.pth.* state_dict"
    ):
        _model(pretrained=str(junk))
