"""Batch normalization as the paper configures it (Sections 3.1, 3.2, 3.4)."""

import keras
from keras import ops

from keras_bninit._validation import (
    choice,
    fraction,
    integer,
    positive_float,
    reject_arguments,
)
from keras_bninit.activations import activation_std as _resolve_activation_std

# PyTorch's BN defaults, which the paper's reference uses (Section 3.1):
# running = 0.9 * running + 0.1 * batch, eps = 1e-5. Keras's own defaults
# (0.99, 1e-3) are not the paper's configuration.
PAPER_MOMENTUM = 0.9
PAPER_EPSILON = 1e-5

# What the moving variance averages: the biased batch variance (Keras's
# convention) or the unbiased one (PyTorch's, the reference's; Section 3.1).
MOVING_VARIANCE = ("biased", "unbiased")


# Stock arguments the unbiased update cannot honour, and why.
_NOT_UNBIASED = {
    "renorm": "batch renormalization tracks a moving standard deviation",
    "synchronized": "the count n of a synchronized batch spans the replicas",
}


def _moving_variance(value):
    return choice("moving_variance", value, MOVING_VARIANCE)


@keras.saving.register_keras_serializable(package="keras_bninit")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a choice of moving variance.

    In training, BN normalizes with the batch mean and the *biased* batch
    variance (the sum of squared deviations divided by n, the number of
    values each channel reduces over: batch size times spatial positions,
    or the mask's count) and updates `moving_mean` and `moving_variance` as
    moving = momentum * moving + (1 - momentum) * batch (Section 3.1).
    Keras averages the biased batch variance into `moving_variance`;
    PyTorch, the paper's reference, averages the unbiased one (divided by
    n - 1). `moving_variance="unbiased"` gives PyTorch's update; the
    normalization is the same either way. Everything else (arguments,
    fused kernels, masks, mixed precision, saving) is the stock layer's.

    With one value per channel (n = 1) the batch variance is 0 and so is
    the unbiased update's share of it (PyTorch refuses such batches).

    Args:
        moving_variance: `"biased"` (Keras's, the default) or `"unbiased"`
            (PyTorch's, the reference's), keyword only. `"unbiased"` does
            not combine with `renorm=True` (which tracks a standard
            deviation instead) or `synchronized=True` (whose count spans
            the replicas).
        *args, **kwargs: the arguments of `keras.layers.BatchNormalization`
            (its defaults: momentum 0.99, epsilon 1e-3; see `batch_norm`
            for the paper's).

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.
        mask: optional mask, as for `keras.layers.BatchNormalization`.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 3.1 (batch normalization as the reference runs it).
    """

    def __init__(self, *args, moving_variance="biased", **kwargs):
        convention = _moving_variance(moving_variance)
        if convention == "unbiased":
            for key, reason in _NOT_UNBIASED.items():
                if kwargs.get(key):
                    raise ValueError(
                        "moving_variance='unbiased' does not combine with "
                        f"`{key}` ({reason}). Received: {key}={kwargs[key]!r}"
                    )
        super().__init__(*args, **kwargs)
        self.moving_variance_convention = convention
        self._batch_variance = None

    def _moments(self, inputs, mask):
        mean, variance = super()._moments(inputs, mask)
        if self.moving_variance_convention == "unbiased":
            # Kept for `call`, which adds the update's missing share.
            self._batch_variance = variance
        return mean, variance

    def call(self, inputs, training=None, mask=None):
        self._batch_variance = None
        outputs = super().call(inputs, training=training, mask=mask)
        variance, self._batch_variance = self._batch_variance, None
        if variance is not None:
            # The stock update stored m * moving + (1 - m) * v with v the
            # biased variance; adding (1 - m) * v / (n - 1) makes it
            # m * moving + (1 - m) * v * n / (n - 1), the unbiased one.
            count = self._count(inputs, mask, variance.dtype)
            share = (
                (1.0 - self.momentum) * variance / ops.maximum(count - 1.0, 1.0)
            )
            self.moving_variance.assign_add(
                ops.cast(share, self.moving_variance.dtype)
            )
        return outputs

    def _count(self, inputs, mask, dtype):
        """n: the values each channel's batch statistics reduce over."""
        if mask is not None:
            # As `_moments` weighs them: the mask spread over the channels.
            weights = ops.broadcast_to(
                ops.expand_dims(ops.cast(mask, dtype), axis=-1),
                ops.shape(inputs),
            )
            return ops.sum(weights, axis=self._reduction_axes)
        shape = ops.shape(inputs)
        count = 1
        for axis in self._reduction_axes:
            count = count * shape[axis]  # a tensor for unknown sizes (TF)
        return ops.cast(count, dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "moving_variance": self.moving_variance_convention,
        }


def batch_norm(gamma=1.0, moving_variance="biased", **kwargs):
    """The paper's BN: a stock `keras.layers.BatchNormalization`, configured.

    y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, with
    gamma_0 = `gamma` (the constant c of Section 3.2, Proposal 1) and
    beta_0 = 0. Running statistics use momentum 0.9 and eps 1e-5 (PyTorch
    semantics, Section 3.1). With `moving_variance="biased"` (the default)
    the result is the stock layer, so it has no overhead, uses the fused
    kernels, and saves/exports like any Keras BN; `"unbiased"` gives
    `keras_bninit.BatchNormalization`, the same layer with PyTorch's
    moving-variance update.

    Args:
        gamma: initial value c of every scale, a finite number > 0 (the paper's
            grid is 0.01 ... 1.0; 0.1 is its suggested start).
        moving_variance: what `moving_variance` averages: `"biased"` batch
            variances (Keras's) or `"unbiased"` ones (PyTorch's, the
            reference's); see `keras_bninit.BatchNormalization`.
        **kwargs: passed to `keras.layers.BatchNormalization` (e.g. `axis`,
            `name`); `momentum` and `epsilon` may be overridden here.

    Returns:
        A `keras.layers.BatchNormalization` (a `keras_bninit.
        BatchNormalization` for `moving_variance="unbiased"`).

    Example:

    ```python
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(inputs)
    x = kb.batch_norm(gamma=0.1)(x)  # scale c = 0.1, momentum 0.9, eps 1e-5
    x = keras.layers.ReLU()(x)
    ```
    """
    gamma = positive_float("gamma", gamma)
    convention = _moving_variance(moving_variance)
    if "gamma_initializer" in kwargs:
        raise ValueError(
            "Pass the initial scale as `gamma`, not `gamma_initializer`. "
            f"Received: gamma_initializer={kwargs['gamma_initializer']!r}"
        )
    kwargs.setdefault("momentum", PAPER_MOMENTUM)
    kwargs.setdefault("epsilon", PAPER_EPSILON)
    kwargs.setdefault("beta_initializer", "zeros")
    kwargs["gamma_initializer"] = keras.initializers.Constant(gamma)
    if convention == "biased":
        return keras.layers.BatchNormalization(**kwargs)
    return BatchNormalization(moving_variance=convention, **kwargs)


@keras.saving.register_keras_serializable(package="keras_bninit")
class InputBatchNorm(BatchNormalization):
    """BN input normalization: a BN without shift, put first in a network.

    Normalizes the raw input (pixels in [0, 1], after augmentation) per
    channel with batch statistics in training and running statistics at
    inference, then scales it: y = g * (x - mean_B) / sqrt(var_B + eps).
    The scale starts at g_0 = `gamma * activation_std` (0.58 c for ReLU
    networks, Section 3.4, Proposal 3) and is trained like every other BN
    scale (it gets the reduced learning rate of `ParamGroupOptimizer`).
    There is no shift (beta is fixed at 0), so it adds one trainable
    parameter per input channel. It replaces fixed `(x - 128) / 128` and
    offline mean/std normalization.

    Args:
        gamma: the constant c used for every BN of the network, > 0.
        activation_std: std of the network's activation of a unit Gaussian,
            as a number or an activation name (`"relu"` gives 0.5838; the
            paper uses 0.58). See `keras_bninit.activation_std`.
        axis: the channel axis (default -1, channels last).
        momentum: running-statistics momentum (default 0.9, PyTorch's 0.1).
        epsilon: variance epsilon (default 1e-5).
        moving_variance: what the running variance averages: `"biased"`
            batch variances (Keras's, the default) or `"unbiased"` ones
            (PyTorch's, the reference's); see `BatchNormalization`.
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the shift or the scale's initial value.

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.

    Example:

    ```python
    inputs = keras.Input((32, 32, 3))  # pixels in [0, 1], no offline mean/std
    x = kb.InputBatchNorm(gamma=0.1, activation_std="relu")(inputs)  # 0.058
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False)(x)
    ```

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 3.3 (BN-based input normalization).
    """

    def __init__(
        self,
        gamma=1.0,
        activation_std=0.58,
        axis=-1,
        momentum=PAPER_MOMENTUM,
        epsilon=PAPER_EPSILON,
        moving_variance="biased",
        **kwargs,
    ):
        gamma = positive_float("gamma", gamma)
        std = _resolve_activation_std(activation_std)
        epsilon = positive_float("epsilon", epsilon)
        momentum = fraction("momentum", momentum)
        axis = integer(
            "axis", axis, description="an integer (the channel axis)"
        )
        reject_arguments(
            "InputBatchNorm",
            kwargs,
            ("center", "scale", "gamma_initializer")
            + tuple(k for k in kwargs if k.startswith("beta_")),
            "has a trainable scale set by `gamma` and `activation_std` and "
            "no shift",
        )
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=False,
            scale=True,
            gamma_initializer=keras.initializers.Constant(gamma * std),
            moving_variance=moving_variance,
            **kwargs,
        )
        self.gamma_value = gamma
        self.activation_std = activation_std
        self.activation_std_value = std

    def build(self, input_shape):
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"`axis` must be in [{-rank}, {rank}) for inputs of rank "
                f"{rank} (shape {tuple(input_shape)}). Received: "
                f"axis={self.axis}"
            )
        super().build(input_shape)

    def get_config(self):
        config = super().get_config()
        for key in (
            "center",
            "scale",
            "gamma_initializer",
            "beta_initializer",
            "beta_regularizer",
            "beta_constraint",
        ):
            config.pop(key, None)
        config["gamma"] = self.gamma_value
        config["activation_std"] = self.activation_std
        return config
