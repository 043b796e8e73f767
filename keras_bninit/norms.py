"""Alternative BN formulations of the ablations (Sections 4.4 and 4.5).

Every layer here shares the paper's BN head with the stock layer: it
subclasses `keras.layers.BatchNormalization` with `center=False` and
`scale=False`, so the normalized tensor

    x_hat = (x - mean) / sqrt(var + eps)

(batch statistics with the biased variance in training, running statistics
with momentum 0.9 and eps 1e-5 at inference, Section 3.1) comes from the
stock code path, and only the tail that follows is new. Like
`keras_bninit.BatchNormalization`, which they extend, they take
`moving_variance="biased"` (Keras's running variance, the default) or
`"unbiased"` (PyTorch's, the reference's). The model zoo takes
these layers through a factory called as `factory(gamma=c, name=...)`;
`norm_layer(kind)` returns it for one of the kinds in `NORM_LAYERS`.
"""

import functools
import types

import keras
from keras import backend, ops

from keras_bninit._validation import choice, positive_float, reject_arguments
from keras_bninit.layers import (
    PAPER_EPSILON,
    PAPER_MOMENTUM,
    BatchNormalization,
    batch_norm,
)
from keras_bninit.optimizers import NO_DECAY, SCALE, tag_variable

# Arguments of the stock layer that concern its own affine tail or change its
# head (renorm); the layers below own their tail and keep the paper's head.
_STOCK_ONLY_ARGS = (
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
)


class _BatchNormHead(BatchNormalization):
    """The stock BN head (x_hat) plus per-channel parameters of a new tail.

    Subclasses create their tail's weights with `_add_channel_weight` in
    `build` and compute the tail from `self._head(...)` in `call`.
    """

    def __init__(
        self,
        axis=-1,
        momentum=PAPER_MOMENTUM,
        epsilon=PAPER_EPSILON,
        **kwargs,
    ):
        reject_arguments(
            type(self).__name__,
            kwargs,
            _STOCK_ONLY_ARGS,
            "owns its affine tail and uses the paper's BN head",
        )
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=False,
            scale=False,
            **kwargs,
        )

    def _add_channel_weight(self, name, value, group, input_shape):
        """Adds one trainable per-channel weight, filled with `value`."""
        variable = self.add_weight(
            shape=(input_shape[self.axis],),
            name=name,
            initializer=keras.initializers.Constant(value),
            trainable=True,
            autocast=False,
        )
        return tag_variable(variable, group)

    def _head(self, inputs, training, mask):
        """x_hat from the stock layer (also updates the running statistics).

        Like the stock layer, the tail is computed in at least float32 (the
        head's result is upcast under mixed precision); `call` casts its
        result back to the compute dtype.
        """
        x_hat = super().call(inputs, training=training, mask=mask)
        return ops.cast(x_hat, backend.result_type(x_hat.dtype, "float32"))

    def _channel(self, variable, x):
        """`variable` cast to `x`'s dtype, shaped to broadcast over `x`."""
        value = ops.cast(variable, x.dtype)
        if self.axis in (-1, len(x.shape) - 1):
            return value
        shape = [1] * len(x.shape)
        shape[self.axis] = -1
        return ops.reshape(value, shape)

    def get_config(self):
        config = super().get_config()
        for key in _STOCK_ONLY_ARGS:
            config.pop(key, None)
        return config


@keras.saving.register_keras_serializable(package="keras_bninit")
class A1BatchNorm(_BatchNormHead):
    """BN formulation A1: the shift is added before the scale.

    y = gamma * (x_hat + beta), with gamma_0 = `gamma` (the constant c) and
    beta_0 = 0 (Section 4.4). There is no extra parameter, but gamma now
    scales beta too, which limits how far beta can shift the data before
    the activation. `gamma` carries c, so it is tagged
    as a BN scale (reduced learning rate, no weight decay); beta is tagged
    no-decay.

    Args:
        gamma: initial scale c, a finite number > 0.
        axis: the channel axis (default -1, channels last).
        momentum: running-statistics momentum (default 0.9, PyTorch's 0.1).
        epsilon: variance epsilon (default 1e-5).
        moving_variance: what the running variance averages: `"biased"`
            batch variances (Keras's, the default) or `"unbiased"` ones
            (PyTorch's, the reference's); see
            `keras_bninit.BatchNormalization`.
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the affine tail (e.g. `name`, `synchronized`).

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.
        mask: optional mask, as for `keras.layers.BatchNormalization`.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 4.4 (alternative formulations).
    """

    def __init__(self, gamma=1.0, **kwargs):
        gamma = positive_float("gamma", gamma)
        super().__init__(**kwargs)
        self.gamma_value = gamma

    def build(self, input_shape):
        super().build(input_shape)
        self.gamma = self._add_channel_weight(
            "gamma", self.gamma_value, SCALE, input_shape
        )
        self.beta = self._add_channel_weight("beta", 0.0, NO_DECAY, input_shape)

    def call(self, inputs, training=None, mask=None):
        x_hat = self._head(inputs, training, mask)
        gamma = self._channel(self.gamma, x_hat)
        outputs = gamma * (x_hat + self._channel(self.beta, x_hat))
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma_value}


@keras.saving.register_keras_serializable(package="keras_bninit")
class A2BatchNorm(_BatchNormHead):
    """BN formulation A2: a new per-channel scale rho outside the affine tail.

    y = rho * (gamma * x_hat + beta), with rho_0 = `rho` (the constant c),
    gamma_0 = 1 and beta_0 = 0 (Section 4.4). The reduced learning rate goes
    to the parameter that carries c, so `rho` is tagged as a BN scale while
    `gamma` and `beta` are tagged no-decay (full learning rate, no weight
    decay).

    Args:
        rho: initial value c of rho, a finite number > 0. (The factory
            `norm_layer("a2")` maps its `gamma=c` argument to `rho`.)
        axis: the channel axis (default -1, channels last).
        momentum: running-statistics momentum (default 0.9, PyTorch's 0.1).
        epsilon: variance epsilon (default 1e-5).
        moving_variance: what the running variance averages: `"biased"`
            batch variances (Keras's, the default) or `"unbiased"` ones
            (PyTorch's, the reference's); see
            `keras_bninit.BatchNormalization`.
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the affine tail (e.g. `name`, `synchronized`).

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.
        mask: optional mask, as for `keras.layers.BatchNormalization`.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 4.4 (alternative formulations).
    """

    def __init__(self, rho=1.0, **kwargs):
        rho = positive_float("rho", rho)
        super().__init__(**kwargs)
        self.rho_value = rho

    def build(self, input_shape):
        super().build(input_shape)
        self.rho = self._add_channel_weight(
            "rho", self.rho_value, SCALE, input_shape
        )
        self.gamma = self._add_channel_weight(
            "gamma", 1.0, NO_DECAY, input_shape
        )
        self.beta = self._add_channel_weight("beta", 0.0, NO_DECAY, input_shape)

    def call(self, inputs, training=None, mask=None):
        x_hat = self._head(inputs, training, mask)
        affine = self._channel(self.gamma, x_hat) * x_hat + self._channel(
            self.beta, x_hat
        )
        outputs = self._channel(self.rho, x_hat) * affine
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho_value}


class _GatedBatchNorm(_BatchNormHead):
    """y = gamma * x_hat * sigmoid(w * s + b) + beta (Section 4.5).

    Subclasses set `_statistic` ("normalized": s = GAP(x_hat), or "input":
    s = GAP(x)) and `_gate_bias` (b_0).
    """

    _statistic = None
    _gate_bias = None

    def __init__(self, gamma=1.0, instance_statistic=True, **kwargs):
        gamma = positive_float("gamma", gamma)
        choice("instance_statistic", instance_statistic, (True, False))
        super().__init__(**kwargs)
        self.gamma_value = gamma
        self.instance_statistic = instance_statistic
        self.gate_weight = None

    def build(self, input_shape):
        super().build(input_shape)
        self.gamma = self._add_channel_weight(
            "gamma", self.gamma_value, SCALE, input_shape
        )
        self.beta = self._add_channel_weight("beta", 0.0, NO_DECAY, input_shape)
        if self.instance_statistic:
            self.gate_weight = self._add_channel_weight(
                "gate_weight", 0.0, NO_DECAY, input_shape
            )
        self.gate_bias = self._add_channel_weight(
            "gate_bias", self._gate_bias, NO_DECAY, input_shape
        )
        # The per-example GAP runs over the spatial axes: all but the batch
        # and channel axes (none for (batch, channels) inputs, where s is
        # the value itself).
        rank = len(input_shape)
        self._spatial_axes = tuple(
            i for i in range(1, rank) if i != self.axis % rank
        )

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError(
                f"{type(self).__name__} does not support masks (its "
                "per-example average pooling would include masked values)."
            )
        x_hat = self._head(inputs, training, None)
        logits = self._channel(self.gate_bias, x_hat)
        if self.instance_statistic:
            if self._statistic == "normalized":
                source = x_hat
            else:
                source = ops.cast(inputs, x_hat.dtype)
            if self._spatial_axes:
                source = ops.mean(
                    source, axis=self._spatial_axes, keepdims=True
                )
            logits = self._channel(self.gate_weight, x_hat) * source + logits
        gamma = self._channel(self.gamma, x_hat)
        gated = gamma * x_hat * ops.sigmoid(logits)
        outputs = gated + self._channel(self.beta, x_hat)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma_value,
            "instance_statistic": self.instance_statistic,
        }


@keras.saving.register_keras_serializable(package="keras_bninit")
class RepresentativeBatchNorm(_GatedBatchNorm):
    """RBN scaling (Representative BN): BN gated by its own instance average.

    y = gamma * x_hat * sigmoid(w * GAP(x_hat) + b) + beta, where GAP is the
    per-example, per-channel average over the spatial axes (the identity for
    (batch, channels) inputs), with w_0 = 0, b_0 = 1, gamma_0 = `gamma`
    and beta_0 = 0; the initial effective scale is gamma_0 * sigmoid(1) =
    0.731 gamma_0 (Section 4.5). Only RBN's scaling part is implemented, as
    in the paper's comparison. With
    `instance_statistic=False` this is RBN-: y = gamma * x_hat * sigmoid(b)
    + beta (no w). gamma is tagged as a BN scale, like the stock layer's
    (the paper trains RBN like BASE, i.e. with divisor a = 1); beta, w
    (`gate_weight`) and b (`gate_bias`) are tagged no-decay.

    Args:
        gamma: initial value of gamma, a finite number > 0 (the paper
            uses 1).
        instance_statistic: whether the gate uses the instance statistic
            (RBN, default) or only the bias (RBN-).
        axis: the channel axis (default -1, channels last).
        momentum: running-statistics momentum (default 0.9, PyTorch's 0.1).
        epsilon: variance epsilon (default 1e-5).
        moving_variance: what the running variance averages: `"biased"`
            batch variances (Keras's, the default) or `"unbiased"` ones
            (PyTorch's, the reference's); see
            `keras_bninit.BatchNormalization`.
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the affine tail (e.g. `name`, `synchronized`).

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.

    Reference:
        Gao et al., "Representative Batch Normalization with Feature
        Calibration", CVPR 2021; compared in Davis & Frank, ECCV 2022,
        Section 4.5.
    """

    _statistic = "normalized"
    _gate_bias = 1.0


@keras.saving.register_keras_serializable(package="keras_bninit")
class InstanceEnhancementBatchNorm(_GatedBatchNorm):
    """IEBN scaling (Instance Enhancement BN): BN gated by the raw input.

    y = gamma * x_hat * sigmoid(w * GAP(x) + b) + beta, where GAP(x) is the
    per-example, per-channel spatial average of the layer's raw input (the
    identity for (batch, channels) inputs), with w_0 = 0, b_0 = -1,
    gamma_0 = `gamma` and beta_0 = 0; the initial effective scale is
    gamma_0 * sigmoid(-1) = 0.269 gamma_0 (Section 4.5). With
    `instance_statistic=False` this is IEBN-: y = gamma * x_hat *
    sigmoid(b) + beta (no w). Tags as in `RepresentativeBatchNorm`.

    Args:
        gamma: initial value of gamma, a finite number > 0 (the paper
            uses 1).
        instance_statistic: whether the gate uses the instance statistic
            (IEBN, default) or only the bias (IEBN-).
        axis: the channel axis (default -1, channels last).
        momentum: running-statistics momentum (default 0.9, PyTorch's 0.1).
        epsilon: variance epsilon (default 1e-5).
        moving_variance: what the running variance averages: `"biased"`
            batch variances (Keras's, the default) or `"unbiased"` ones
            (PyTorch's, the reference's); see
            `keras_bninit.BatchNormalization`.
        **kwargs: other `keras.layers.BatchNormalization` arguments that do
            not concern the affine tail (e.g. `name`, `synchronized`).

    Call arguments:
        inputs: a tensor of any rank; normalized over all axes but `axis`.
        training: whether to use batch statistics and update the running
            ones.

    Reference:
        Liang et al., "Instance Enhancement Batch Normalization: An Adaptive
        Regulator of Batch Noise", AAAI 2020; compared in Davis & Frank,
        ECCV 2022, Section 4.5.
    """

    _statistic = "input"
    _gate_bias = -1.0


def _a2_batch_norm(gamma=1.0, **kwargs):
    """A2 through the common factory signature: c goes to rho."""
    return A2BatchNorm(rho=positive_float("gamma", gamma), **kwargs)


# kind -> factory(gamma=c, **kwargs). `gamma=c` is the BN scale init of
# Proposal 1: the initial value of the parameter that gets the reduced
# learning rate (gamma for standard, A1, RBN, IEBN; rho for A2).
NORM_LAYERS = types.MappingProxyType(
    {
        "standard": batch_norm,
        "a1": A1BatchNorm,
        "a2": _a2_batch_norm,
        "rbn": RepresentativeBatchNorm,
        "iebn": InstanceEnhancementBatchNorm,
        "rbn-": functools.partial(
            RepresentativeBatchNorm, instance_statistic=False
        ),
        "iebn-": functools.partial(
            InstanceEnhancementBatchNorm, instance_statistic=False
        ),
    }
)


def norm_layer(kind, **defaults):
    """The factory of one BN formulation, for a model builder's `norm_layer`.

    The returned factory is called as `factory(gamma=c, name=...)` and
    returns a new layer. `gamma=c` always initializes the parameter that
    carries the BN scale init of Proposal 1 (Section 3.2) and is tagged
    for the reduced learning rate:

    - "standard": stock `keras.layers.BatchNormalization` via
      `keras_bninit.batch_norm`, gamma_0 = c.
    - "a1": `A1BatchNorm`, gamma_0 = c (Section 4.4).
    - "a2": `A2BatchNorm`, rho_0 = c, gamma_0 = 1 (Section 4.4).
    - "rbn", "iebn", "rbn-", "iebn-": `RepresentativeBatchNorm` /
      `InstanceEnhancementBatchNorm` (the "-" kinds without the instance
      statistic), gamma_0 = c (Section 4.5). The paper's comparison uses
      c = 1 and a = 1 (trained like BASE); another c combines the method
      with Proposal 1.

    Args:
        kind: one of the keys of `NORM_LAYERS`.
        **defaults: keyword arguments bound into every layer the factory
            makes (e.g. `momentum`, or `moving_variance="unbiased"` for
            PyTorch's running variance, which every kind takes); those
            given at the call win.

    Returns:
        A callable `factory(gamma=1.0, **kwargs)` returning a layer.
    """
    if kind not in NORM_LAYERS:
        raise ValueError(
            f"Unknown BN formulation. Expected one of {list(NORM_LAYERS)}. "
            f"Received: kind={kind!r}"
        )
    factory = NORM_LAYERS[kind]
    return functools.partial(factory, **defaults) if defaults else factory
