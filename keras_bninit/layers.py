"""Batch normalization as the paper configures it (Sections 3.1, 3.2, 3.4)."""

import numbers

import keras

from keras_bninit._validation import positive_float, reject_arguments
from keras_bninit.activations import activation_std as _resolve_activation_std

# PyTorch's BN defaults, which the paper's reference uses (Section 3.1):
# running = 0.9 * running + 0.1 * batch, eps = 1e-5. Keras's own defaults
# (0.99, 1e-3) are not the paper's configuration.
PAPER_MOMENTUM = 0.9
PAPER_EPSILON = 1e-5


def batch_norm(gamma=1.0, **kwargs):
    """A stock `keras.layers.BatchNormalization` configured as the paper's BN.

    y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, with
    gamma_0 = `gamma` (the constant c of Section 3.2, Proposal 1) and
    beta_0 = 0. Running statistics use momentum 0.9 and eps 1e-5 (PyTorch
    semantics, Section 3.1). Because the result is the stock layer, it has
    no overhead, uses the fused kernels, and saves/exports like any Keras BN.

    Args:
        gamma: initial value c of every scale, a finite number > 0 (the paper's
            grid is 0.01 ... 1.0; 0.1 is its suggested start).
        **kwargs: passed to `keras.layers.BatchNormalization` (e.g. `axis`,
            `name`); `momentum` and `epsilon` may be overridden here.

    Returns:
        A `keras.layers.BatchNormalization`.
    """
    gamma = positive_float("gamma", gamma)
    if "gamma_initializer" in kwargs:
        raise ValueError(
            "Pass the initial scale as `gamma`, not `gamma_initializer`. "
            f"Received: gamma_initializer={kwargs['gamma_initializer']!r}"
        )
    kwargs.setdefault("momentum", PAPER_MOMENTUM)
    kwargs.setdefault("epsilon", PAPER_EPSILON)
    kwargs.setdefault("beta_initializer", "zeros")
    return keras.layers.BatchNormalization(
        gamma_initializer=keras.initializers.Constant(gamma), **kwargs
    )


@keras.saving.register_keras_serializable(package="keras_bninit")
class InputBatchNorm(keras.layers.BatchNormalization):
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
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the shift or the scale's initial value.

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.

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
        **kwargs,
    ):
        gamma = positive_float("gamma", gamma)
        std = _resolve_activation_std(activation_std)
        epsilon = positive_float("epsilon", epsilon)
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, numbers.Real)
            or not 0.0 <= float(momentum) <= 1.0
        ):
            raise ValueError(
                "`momentum` must be a real number in [0, 1]. "
                f"Received: momentum={momentum!r}"
            )
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
            raise ValueError(
                "`axis` must be an integer (the channel axis). "
                f"Received: axis={axis!r}"
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
