"""Apply the paper's BN changes to an existing Keras model (Secs. 3.2, 3.4)."""

import keras
import numpy as np

from keras_bninit._validation import choice, positive_float
from keras_bninit.layers import BatchNormalization, InputBatchNorm


def batch_norm_layers(model):
    """Every `BatchNormalization` in `model`, nested models included.

    Subclasses (`InputBatchNorm`, the alternative formulations) count too.
    Layers shared by several parents are listed once, in model order.
    """
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def _reset_bn(layer, gamma):
    """Scale to `gamma`, shift to 0, running statistics to 0 / 1."""
    if layer.scale:
        layer.gamma.assign(np.full(layer.gamma.shape, gamma, "float32"))
        layer.gamma_initializer = keras.initializers.Constant(gamma)
    if layer.center:
        layer.beta.assign(np.zeros(layer.beta.shape, "float32"))
        layer.beta_initializer = keras.initializers.Zeros()
    layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, "float32"))
    layer.moving_variance.assign(
        np.ones(layer.moving_variance.shape, "float32")
    )


def _single_input_shape(model, input_shape):
    if input_shape is not None:
        return tuple(input_shape), None
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        raise ValueError(
            "retrofit(input_bn=True) cannot tell the input shape of this "
            f"model ({type(model).__name__} {model.name!r} has no symbolic "
            "inputs, e.g. a subclassed model): pass input_shape=(H, W, C)."
        )
    if len(inputs) != 1:
        raise ValueError(
            "retrofit(input_bn=True) prepends one InputBatchNorm and needs a "
            f"model with one input; {model.name!r} has {len(inputs)}. Pass "
            "input_bn=False and add InputBatchNorm to the image input yourself."
        )
    return tuple(inputs[0].shape[1:]), inputs[0].dtype


def retrofit(
    model,
    gamma=0.1,
    input_bn=True,
    activation_std=0.58,
    input_shape=None,
):
    """Applies the paper's BN initialization to any built Keras model.

    Every `BatchNormalization` of `model` (Functional, Sequential,
    subclassed, nested) gets its scale set to `gamma` and its shift to 0
    (Section 3.2, Proposal 1), and its running statistics reset to mean 0,
    variance 1. This changes `model`'s layers in place; the original model
    keeps working (with the new values). When `input_bn` is true, the
    function returns a new Functional model that applies an `InputBatchNorm`
    with scale `gamma * activation_std` and then `model` (Section 3.4,
    Proposal 3); the two share their layers. Train the result with
    `ParamGroupOptimizer` for Proposal 2. Existing `InputBatchNorm` layers
    are reset to `gamma * their activation_std`.

    The momentum and epsilon of existing BN layers are left as they are
    (Keras's defaults are 0.99 / 1e-3, the paper's 0.9 / 1e-5).

    Args:
        model: a built `keras.Model`.
        gamma: the constant c (> 0) for every BN scale.
        input_bn: whether to prepend an `InputBatchNorm`.
        activation_std: std of the network's activation of a unit Gaussian,
            a number or a name (see `keras_bninit.activation_std`).
        input_shape: the input shape without the batch axis; needed only for
            models without symbolic inputs (subclassed models).

    Returns:
        The model to train: a new Functional model with the input BN first,
        or `model` itself when `input_bn` is false.

    Example:

    ```python
    base = keras.applications.MobileNetV2(weights=None, classes=10)
    model = kb.retrofit(base, gamma=0.1)  # every BN scale 0.1, input BN first
    optimizer = kb.ParamGroupOptimizer(kb.TorchSGD(0.1, momentum=0.9))
    model.compile(optimizer, "sparse_categorical_crossentropy")
    ```
    """
    gamma = positive_float("gamma", gamma)
    choice("input_bn", input_bn, (True, False))
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a keras.Model. Received: {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"`model` {model.name!r} is not built: call it on a batch or "
            "call model.build(input_shape) first, so its BN weights exist."
        )
    layers = batch_norm_layers(model)
    for layer in layers:
        if type(layer) not in (
            keras.layers.BatchNormalization,
            BatchNormalization,
            InputBatchNorm,
        ):
            raise ValueError(
                f"retrofit resets stock BatchNormalization layers; layer "
                f"{layer.name!r} is a {type(layer).__name__}. Build such "
                "models with the formulation's own `gamma` (e.g. the "
                "`norm_layer` factory of the model zoo) instead."
            )
    for layer in layers:
        if isinstance(layer, InputBatchNorm):
            _reset_bn(layer, gamma * layer.activation_std_value)
            layer.gamma_value = gamma
        else:
            _reset_bn(layer, gamma)
    if not input_bn:
        return model
    shape, dtype = _single_input_shape(model, input_shape)
    inputs = keras.Input(shape=shape, dtype=dtype, name="image")
    axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    x = InputBatchNorm(
        gamma=gamma, activation_std=activation_std, axis=axis, name="input_bn"
    )(inputs)
    return keras.Model(inputs, model(x), name=f"{model.name}_bninit")
