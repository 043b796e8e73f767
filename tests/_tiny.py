"""A tiny model with the model zoo's builder signature, for fast runs,
and a callback that interrupts a run at a chosen epoch."""

import keras

from keras_bninit import InputBatchNorm
from keras_bninit.initializers import VarianceScaling


def tiny_builder(
    name,
    num_classes,
    input_shape,
    bn_gamma,
    input_bn,
    activation_std,
    norm_layer,
    moving_variance="biased",
    zoo_initializers=False,
):
    """The model; `zoo_initializers`: its kernels drawn as the model zoo
    draws them (NumPy, from the seed and a key), else Keras's defaults."""
    del name

    def kernel(key):
        return (
            VarianceScaling(key=key) if zoo_initializers else "glorot_uniform"
        )

    inputs = keras.Input(input_shape)
    x = inputs
    if input_bn:
        x = InputBatchNorm(
            bn_gamma,
            activation_std,
            moving_variance=moving_variance,
            name="input_bn",
        )(x)
    x = keras.layers.Conv2D(
        8,
        3,
        padding="same",
        use_bias=False,
        name="conv1",
        kernel_initializer=kernel("conv1/kernel"),
    )(x)
    x = norm_layer(gamma=bn_gamma, name="bn1", moving_variance=moving_variance)(
        x
    )
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        num_classes,
        name="fc",
        kernel_initializer=kernel("fc/kernel"),
    )(x)
    return keras.Model(inputs, outputs)


def tiny_zoo_builder(name, **kwargs):
    """`tiny_builder` with the model zoo's initializers: a sweep worker
    takes its runs' models back, their weights drawn again."""
    return tiny_builder(name, **kwargs, zoo_initializers=True)


class Crash(Exception):
    """Raised by `CrashAt`: stands for a process killed mid-run."""


class CrashAt(keras.callbacks.Callback):
    """Raises `Crash` when training reaches epoch `epoch` (0-based)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash()
