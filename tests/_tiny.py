"""A tiny model with the model zoo's builder signature, for fast runs."""

import keras

from keras_bninit import InputBatchNorm


def tiny_builder(
    name,
    num_classes,
    input_shape,
    bn_gamma,
    input_bn,
    activation_std,
    norm_layer,
):
    del name
    inputs = keras.Input(input_shape)
    x = inputs
    if input_bn:
        x = InputBatchNorm(bn_gamma, activation_std, name="input_bn")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(
        x
    )
    x = norm_layer(gamma=bn_gamma, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs)
