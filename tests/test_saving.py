"""kb.load_model: a .keras file of the method, loaded; failures in one line."""

import os

import keras
import numpy as np
import pytest

import keras_bninit as kb


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = kb.InputBatchNorm(0.1, moving_variance="unbiased", name="input_bn")(
        inputs
    )
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
    x = kb.batch_norm(0.1, moving_variance="unbiased", name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    schedule = kb.EpochCosineDecay(0.1, 4, 3, per_group_floor=True)
    model.compile(
        kb.ParamGroupOptimizer(kb.TorchSGD(schedule, momentum=0.9)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).random((16, 6, 6, 2), dtype=np.float32)
    model.fit(x, np.arange(16) % 3, batch_size=4, epochs=1, verbose=0)
    return model, x


def test_load_model_round_trip(tmp_path):
    model, x = _model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = kb.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x, training=False)),
        keras.ops.convert_to_numpy(model(x, training=False)),
        rtol=1e-6,
        atol=1e-6,
    )
    assert loaded.get_layer("bn").moving_variance_convention == "unbiased"
    inner = loaded.optimizer.inner_optimizer
    assert isinstance(inner, kb.TorchSGD)
    assert inner._learning_rate.per_group_floor is True


@pytest.mark.parametrize(
    "name, reason",
    [
        ("absent.keras", "no such file"),
        ("folder", "it is a folder, not a .keras file"),
        ("weights.bin", "not a .keras file (its name must end in .keras)"),
        ("garbage.keras", "it is not a .keras file (not a zip archive"),
    ],
)
def test_not_found_not_keras_and_damaged_are_told_apart(tmp_path, name, reason):
    path = str(tmp_path / name)
    if name == "folder":
        os.mkdir(path)
    elif name != "absent.keras":
        with open(path, "wb") as f:
            f.write(b"not a model")
    with pytest.raises(ValueError) as info:
        kb.load_model(path)
    message = str(info.value)
    assert message.startswith(f"Cannot load {path!r}: {reason}")
    assert "\n" not in message and len(message) < 400


def test_an_unregistered_class_is_named_in_one_line(tmp_path):
    @keras.saving.register_keras_serializable(package="elsewhere")
    class Doubling(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2

    inputs = keras.Input((3,))
    model = keras.Model(inputs, Doubling()(inputs))
    path = str(tmp_path / "custom.keras")
    model.save(path)
    del keras.saving.get_custom_objects()["elsewhere>Doubling"]
    with pytest.raises(ValueError) as info:
        kb.load_model(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert "the class 'Doubling' is not registered" in message
