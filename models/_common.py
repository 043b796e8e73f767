"""Argument checks and model assembly shared by every builder.

Every builder of the zoo takes the same keyword arguments (documented in
`build_classifier`) and returns a Functional `keras.Model` that maps
channels-last images to logits:

    input -> [input_bn] -> features (family specific) -> pool -> [dropout] -> fc

or, with `include_top=False` (as `keras.applications`), to the feature map
(`pooling=None`) or its global average / maximum (`"avg"` / `"max"`).

All arguments are checked before any layer or weight is made, so a bad value
fails at once with a `ValueError` that names it.
"""

import functools
import inspect

import keras

import keras_bninit
from keras_bninit._validation import (
    choice,
    integer,
    is_integer,
    positive_float,
)
from keras_bninit.layers import MOVING_VARIANCE

from ._layers import Norm, classifier

# Inputs of this many pixels or fewer (both sides) get the paper's
# small-input (CIFAR) variants when `small_inputs` is automatic.
SMALL_INPUT_MAX_SIZE = 64

# `pooling` of a model without its classifier (as keras.applications).
POOLINGS = (None, "avg", "max")


def _check_input_shape(input_shape):
    def is_size(d):
        return is_integer(d) and d > 0

    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if (
        shape is None
        or len(shape) != 3
        or not is_size(shape[2])
        or not all(d is None or is_size(d) for d in shape[:2])
    ):
        raise ValueError(
            "`input_shape` must be (height, width, channels), channels last, "
            "with positive integers (height and width may be None). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(None if d is None else int(d) for d in shape)


def resolve_small_inputs(small_inputs, input_shape):
    """Whether to use the small-input (CIFAR) variant of an architecture.

    Args:
        small_inputs: True, False, or None for automatic: on when height
            and width are both <= 64 px (Section 4.1).
        input_shape: a checked (height, width, channels) tuple.
    """
    if choice("small_inputs", small_inputs, (True, False, None)) is not None:
        return small_inputs
    if None in input_shape[:2]:
        raise ValueError(
            "`small_inputs=None` (automatic) needs a known input size; pass "
            "small_inputs=True or False for a variable-size input. "
            f"Received: input_shape={input_shape!r}"
        )
    return max(input_shape[:2]) <= SMALL_INPUT_MAX_SIZE


def _takes_argument(factory, name):
    """Whether `factory` accepts the keyword `name` (True when unsure)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def build_classifier(
    name,
    features,
    total_stride,
    *,
    num_classes=1000,
    input_shape=(224, 224, 3),
    bn_gamma=1.0,
    input_bn=False,
    activation_std=0.58,
    norm_layer=None,
    small_inputs=None,
    moving_variance="biased",
    include_top=True,
    pooling=None,
    pool_name="avgpool",
    fc_name="fc",
    dropout=0.0,
):
    """Checks the arguments, then builds input -> features -> classifier.

    Args:
        name: the model's name.
        features: `features(x, norm, small_inputs) -> tensor`, the family's
            convolutional body; `norm` is a `Norm` (call `norm(name)` for
            each normalization layer).
        total_stride: `total_stride(small_inputs) -> int`, the body's
            overall downsampling factor; smaller inputs are rejected.
        num_classes: number of classes, >= 2 (the logits' size).
        input_shape: (height, width, channels), channels last.
        bn_gamma: the constant c every BN scale starts at (Section 3.2;
            the paper's grid is 0.01 ... 1.0, 0.1 its suggested start).
        input_bn: prepend `keras_bninit.InputBatchNorm`, whose scale starts
            at `bn_gamma * activation_std` (Section 3.4).
        activation_std: std of the activation of a unit Gaussian, for the
            input BN (0.58 for ReLU, as the paper), or an activation name.
        norm_layer: factory called as `norm_layer(gamma=c, name=...)` for
            every normalization layer; None means `keras_bninit.batch_norm`.
        small_inputs: the paper's small-input (CIFAR) variant; None (the
            default) turns it on for inputs of 64 px or less.
        moving_variance: what every BN's running variance averages:
            `"biased"` batch variances (Keras's, the default) or
            `"unbiased"` ones (PyTorch's, the reference's, Section 3.1).
            It goes to the input BN, and `"unbiased"` is bound into
            `norm_layer` (every `keras_bninit.norm_layer` factory takes it).
        include_top: end in the classifier (global average pooling and a
            dense layer to `num_classes` logits), as torchvision; False
            ends in the features, for transfer learning.
        pooling: without the top, the output: None the last feature map
            (batch, h, w, channels), `"avg"` or `"max"` its global average
            or maximum (batch, channels). With the top, None or `"avg"`
            (the classifier's own pooling).
        pool_name, fc_name, dropout: the head's layer names and dropout
            rate (see `models._layers.classifier`).

    Returns:
        A `keras.Model` named `name` from images to logits (or features).
    """
    num_classes = integer("num_classes", num_classes, 2)
    choice("include_top", include_top, (True, False))
    choice("pooling", pooling, POOLINGS)
    if include_top and pooling == "max":
        raise ValueError(
            "`pooling='max'` needs include_top=False: the classifier pools "
            "by average, as torchvision. Received: pooling='max', "
            "include_top=True"
        )
    input_shape = _check_input_shape(input_shape)
    gamma = positive_float("bn_gamma", bn_gamma)
    keras_bninit.activation_std(activation_std)  # raises on a bad value
    choice("input_bn", input_bn, (True, False))
    if norm_layer is None:
        norm_layer = keras_bninit.batch_norm
    if not callable(norm_layer):
        raise ValueError(
            "`norm_layer` must be a callable `norm_layer(gamma=c, name=...)` "
            f"returning a Keras layer. Received: norm_layer={norm_layer!r}"
        )
    moving_variance = choice(
        "moving_variance", moving_variance, MOVING_VARIANCE
    )
    if moving_variance != "biased":
        # "biased" is every factory's default, so only the other is bound.
        if not _takes_argument(norm_layer, "moving_variance"):
            raise ValueError(
                f"moving_variance={moving_variance!r} needs a `norm_layer` "
                "that takes `moving_variance` (as keras_bninit.batch_norm "
                f"and every keras_bninit.norm_layer factory do). Received: "
                f"norm_layer={norm_layer!r}"
            )
        norm_layer = functools.partial(
            norm_layer, moving_variance=moving_variance
        )
    small = resolve_small_inputs(small_inputs, input_shape)
    stride = total_stride(small)
    if any(d is not None and d < stride for d in input_shape[:2]):
        raise ValueError(
            f"`input_shape` is too small for {name}: with "
            f"small_inputs={small} the network downsamples by {stride}, so "
            f"height and width must be >= {stride}. "
            f"Received: input_shape={input_shape!r}"
        )

    inputs = keras.Input(input_shape, name="input")
    x = inputs
    if input_bn:
        x = keras_bninit.InputBatchNorm(
            gamma=gamma,
            activation_std=activation_std,
            moving_variance=moving_variance,
            name="input_bn",
        )(x)
    x = features(x, Norm(norm_layer, gamma), small)
    if include_top:
        x = classifier(
            x,
            num_classes,
            pool_name=pool_name,
            fc_name=fc_name,
            dropout=dropout,
        )
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name=pool_name)(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="global_max_pool")(x)
    return keras.Model(inputs, x, name=name)
