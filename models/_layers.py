"""Building blocks shared by every family: conv + BN + activation, the head.

All convolutions pad like PyTorch (`padding = kernel_size // 2` on every
side), so each layer sees exactly the pixels its torchvision counterpart
sees: Keras's `padding="same"` equals that for stride 1, but for stride 2 it
pads only the bottom/right, so strided convolutions get an explicit
`ZeroPadding2D` followed by a `"valid"` convolution.

Initialization follows Section 4.1:
convolution kernels Kaiming normal, fan-in, ReLU gain
(std = sqrt(2 / fan_in)); dense kernels PyTorch's `nn.Linear` default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)); all biases 0; BN beta 0 and gamma c (set
by the `norm_layer` factory). The random kernels come from
`keras_bninit.initializers`, keyed by each variable's path
(`"conv1/kernel"`): NumPy draws them from the seed of
`keras_bninit.set_seed` (Section 4.3), so a seed builds the same network on
every backend.
"""

import dataclasses
from collections.abc import Callable

import keras

from keras_bninit.initializers import VarianceScaling


def conv_kernel_initializer(key):
    """Kaiming normal, fan-in, ReLU gain: N(0, 2 / fan_in), untruncated.

    Args:
        key: the kernel's path, e.g. `"conv1/kernel"` (see
            `keras_bninit.initializers.VarianceScaling`).
    """
    return VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal", key=key
    )


def depthwise_kernel_initializer(key):
    """Kaiming normal for a depthwise kernel, with PyTorch's fan-in.

    PyTorch's depthwise weight has shape (C, 1, k, k), so its fan-in is k*k.
    Keras's depthwise kernel has shape (k, k, C, 1) and Keras reads C as the
    input channels (fan_in = k*k*C), but its fan-out is k*k*1: the fan-in
    PyTorch uses. Hence mode="fan_out" gives std = sqrt(2 / (k*k)).

    Args:
        key: the kernel's path.
    """
    return VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal", key=key
    )


def dense_kernel_initializer(key):
    """PyTorch's `nn.Linear` default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    VarianceScaling's uniform limit is sqrt(3 * scale / fan_in); scale 1/3
    makes it 1/sqrt(fan_in).

    Args:
        key: the kernel's path.
    """
    return VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform", key=key
    )


@dataclasses.dataclass(frozen=True)
class Norm:
    """A `norm_layer` factory bound to the network's BN scale constant c.

    Every normalization layer of a network is made by `norm(name)`, which
    calls `norm_layer(gamma=c, name=name)` (keyword arguments only), so any
    BN formulation with that signature (`keras_bninit.batch_norm`, A1, A2,
    RBN, ...) plugs in without touching the architectures.
    """

    norm_layer: Callable[..., keras.layers.Layer]
    gamma: float

    def __call__(self, name):
        return self.norm_layer(gamma=self.gamma, name=name)


def conv(
    x,
    filters,
    kernel_size,
    *,
    name,
    strides=1,
    groups=1,
    depthwise=False,
    use_bias=False,
):
    """A 2D convolution padded like PyTorch (`kernel_size // 2` each side).

    Args:
        x: channels-last input tensor.
        filters: output channels (ignored when `depthwise`, which keeps
            the channel count, i.e. depth multiplier 1).
        kernel_size: odd int, the square kernel's size.
        name: the layer's name; a padding layer, when needed, is
            `name + "_pad"`.
        strides: int stride.
        groups: number of groups (ResNeXt's cardinality).
        depthwise: a depthwise convolution (MobileNetV2).
        use_bias: add a bias (initialized to 0); torchvision's convs
            followed by BN have none.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=name + "_pad")(x)
        padding = "valid"
    elif kernel_size == 1:
        padding = "valid"
    common = dict(
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        bias_initializer="zeros",
        name=name,
    )
    if depthwise:
        layer = keras.layers.DepthwiseConv2D(
            depthwise_initializer=depthwise_kernel_initializer(
                f"{name}/kernel"
            ),
            **common,
        )
    else:
        layer = keras.layers.Conv2D(
            filters,
            groups=groups,
            kernel_initializer=conv_kernel_initializer(f"{name}/kernel"),
            **common,
        )
    return layer(x)


def activation(x, kind, name):
    """`"relu"`, `"relu6"` or None (identity) as a named Keras layer."""
    if kind is None:
        return x
    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    if kind == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=name)(x)
    raise ValueError(
        f"Unknown activation. Expected 'relu', 'relu6' or None. "
        f"Received: {kind!r}"
    )


def conv_bn(x, norm, filters, kernel_size, conv_name, norm_name, **kwargs):
    """conv -> norm, a linear unit (e.g. a projection shortcut, or the last
    conv of a residual branch, which is activated after the addition).

    Args:
        x: input tensor.
        norm: a `Norm` (the network's bound `norm_layer` factory).
        filters: output channels.
        kernel_size: the kernel's size.
        conv_name, norm_name: the two layers' names.
        **kwargs: `strides`, `groups`, `depthwise` for `conv`.
    """
    x = conv(x, filters, kernel_size, name=conv_name, **kwargs)
    return norm(norm_name)(x)


def conv_bn_act(
    x, norm, filters, kernel_size, names, *, act="relu", **conv_kwargs
):
    """conv -> norm -> activation, the unit every family is made of.

    Args:
        x: input tensor.
        norm: a `Norm` (the network's bound `norm_layer` factory).
        filters: output channels.
        kernel_size: the kernel's size.
        names: (conv name, norm name, activation name); the activation name
            is unused when `act` is None.
        act: `"relu"`, `"relu6"` or None (a linear unit, e.g. the last conv
            of a residual branch, which is activated after the addition).
        **conv_kwargs: `strides`, `groups`, `depthwise` for `conv`.
    """
    conv_name, norm_name, act_name = names
    x = conv_bn(
        x, norm, filters, kernel_size, conv_name, norm_name, **conv_kwargs
    )
    return activation(x, act, act_name)


def max_pool(x, name):
    """PyTorch's `MaxPool2d(3, stride=2, padding=1)` after a ReLU.

    PyTorch pads max-pooling with -inf; the input here is a ReLU output
    (>= 0), so zero padding gives the same result.
    """
    x = keras.layers.ZeroPadding2D(1, name=name + "_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, name=name)(x)


def classifier(x, num_classes, *, pool_name, fc_name, dropout=0.0):
    """Global average pooling, optional dropout, then a dense classifier.

    The dense layer returns logits (no softmax), as torchvision's models.
    With dropout, the dropout layer is `fc_name + "_0"` and the dense layer
    `fc_name + "_1"`, mirroring torchvision's
    `classifier = Sequential(Dropout, Linear)` (`classifier.0/1`).
    """
    x = keras.layers.GlobalAveragePooling2D(name=pool_name)(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=fc_name + "_0")(x)
        fc_name = fc_name + "_1"
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=dense_kernel_initializer(f"{fc_name}/kernel"),
        bias_initializer="zeros",
        name=fc_name,
    )(x)
