"""Precise BN statistics: population means and variances over many batches.

During training, BN keeps exponential moving averages of the batch
statistics: with momentum m = 0.9 (the paper's PyTorch setting, Section 3.1)
the running variance starts at 1 and keeps a share m^T of that start after T
steps. With the paper's c < 1 the variance of a later BN's input is about
c^2 (0.01 for c = 0.1), so a short run (tens of steps, a smoke test, a
fine-tune) evaluates with statistics that are off by orders of magnitude.
The paper never meets this (352 steps per CIFAR epoch); a short run does.

`update_bn_stats` replaces the running statistics of every BN layer with
the population statistics of N training batches, the model being run in
training mode: the mean of the batch means, and the mean of (batch variance
+ batch mean^2) minus the squared mean, i.e. the variance of all the
batches' samples pooled, so the spread between batch means counts too (Wu &
Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore's
`update_bn_stats`). That variance is the biased one for every layer,
including those whose running variance averages unbiased batch variances in
training (`moving_variance="unbiased"`, PyTorch's convention): fvcore stores
the same for PyTorch's BN, undoing the Bessel correction with each batch's
count. `PreciseBN` does it in `model.fit` after each epoch's
training, before validation.
"""

import warnings

import keras
import numpy as np
from keras import ops

from keras_bninit._validation import positive_int
from keras_bninit.retrofit import batch_norm_layers

# Wu & Johnson use a few hundred batches; more add little.
DEFAULT_NUM_BATCHES = 200


def _inputs(batch):
    """The model inputs of one batch: x of (x, y) / (x, y, w), or the batch."""
    if isinstance(batch, tuple) and len(batch) in (2, 3):
        return batch[0]
    return batch


def _batch_size(inputs):
    """The number of examples in a batch of inputs: its leading dimension."""
    return int(keras.tree.flatten(inputs)[0].shape[0])


class _PooledMoments:
    """Mean and biased variance of samples pooled from batches' moments.

    A batch of weight w (its number of examples), mean m and biased
    variance v is merged into the running totals W, mean M and sum of
    squared deviations S by Chan et al.'s update: with delta = m - M,
    M += delta * w / (W + w) and S += w * v + delta^2 * W * w / (W + w).
    Then M is the weighted mean of the batch means and S / W equals the
    weighted mean of (v + m^2) minus M^2, the variance of every sample of
    the batches pooled (each of a batch's examples contributing the same
    number of positions), without the cancellation of that difference.
    """

    def __init__(self, shape):
        self.weight = 0.0
        self.mean = np.zeros(shape, np.float64)
        self.squares = np.zeros(shape, np.float64)

    def add(self, mean, variance, weight):
        total = self.weight + weight
        delta = mean - self.mean
        self.mean += delta * (weight / total)
        self.squares += weight * variance + delta**2 * (
            self.weight * weight / total
        )
        self.weight = total

    @property
    def variance(self):
        return self.squares / self.weight


def _is_array(data, batch_size):
    """Whether `data` is an array to batch; raises `ValueError` for data
    that no batches can come from, before any is computed."""
    if isinstance(data, np.ndarray) or (
        batch_size is not None and hasattr(data, "shape")
    ):
        if batch_size is None:
            raise ValueError(
                "`batch_size` is needed when `data` is an array, e.g. "
                "batch_size=128 (the training batch size). Received: data "
                f"of shape {tuple(data.shape)}, batch_size=None"
            )
        positive_int("batch_size", batch_size)
        return True
    if batch_size is not None:
        raise ValueError(
            "`batch_size` applies to array data only; the batches of a "
            f"{type(data).__name__} are given. Received: "
            f"batch_size={batch_size!r}"
        )
    if not hasattr(data, "__iter__") and not hasattr(data, "__getitem__"):
        raise ValueError(
            "`data` must be a NumPy array (with `batch_size`), a "
            "tf.data.Dataset or an iterable of batches. Received: "
            f"{type(data).__name__}"
        )
    return False


def _batches(data, batch_size):
    """An iterator of input batches from an array, a dataset or an iterable."""
    if _is_array(data, batch_size):
        data = np.asarray(data)
        return (
            data[start : start + batch_size]
            for start in range(0, len(data), batch_size)
        )
    if hasattr(data, "as_numpy_iterator") and keras.backend.backend() != (
        "tensorflow"
    ):
        # A tf.data.Dataset feeding a JAX or PyTorch model.
        return iter(data.as_numpy_iterator())
    try:
        return iter(data)
    except TypeError:
        raise ValueError(
            "`data` must be a NumPy array (with `batch_size`), a "
            "tf.data.Dataset or an iterable of batches. Received: "
            f"{type(data).__name__}"
        ) from None


def update_bn_stats(
    model, data, num_batches=DEFAULT_NUM_BATCHES, batch_size=None
):
    """Recomputes the running statistics of every BN layer of `model`.

    The model is called in training mode on up to `num_batches` batches of
    `data`. For each BN layer (nested models and subclasses such as
    `InputBatchNorm` and the formulations of `keras_bninit.norms` included)
    the new statistics are those of the population the batches sample, as
    fvcore computes them: with m_b and v_b the mean and biased variance
    batch b gave the layer and w_b its number of examples,
    `moving_mean = sum(w_b m_b) / sum(w_b)` and
    `moving_variance = sum(w_b (v_b + m_b^2)) / sum(w_b) - moving_mean^2`,
    which is the biased variance of all the batches' samples pooled (for a
    convolution's BN: over examples and positions), the spread between the
    batch means included. Batches of equal size weigh the same; a last,
    smaller batch weighs less. The stored variance is this biased one for
    every layer, also for layers built with `moving_variance="unbiased"`
    (their batches are read with the biased variance): fvcore does the same
    for PyTorch's BN, whose running variance is otherwise the unbiased one,
    so both frameworks end with the same statistics. Trainable weights are
    not changed; each layer's momentum and moving-variance convention are
    restored afterwards. Layers that are frozen (`trainable=False`) use
    their running statistics in training mode too, so they are left as
    they are.

    Call it on training data (with the training augmentation, as fvcore
    does), after training or after each epoch (see `PreciseBN`).

    Args:
        model: a built `keras.Model` (or layer) containing BN layers.
        data: a NumPy array of inputs (with `batch_size`), a
            `tf.data.Dataset` or any iterable of batches; a batch is the
            inputs or an `(x, y)` / `(x, y, sample_weight)` tuple.
        num_batches: the most batches to use, a positive int (200 by
            default); fewer when `data` ends first.
        batch_size: the batch size for array `data`; only for arrays.

    Returns:
        The number of batches used (0 when `model` has no BN layer to
        update).

    Raises:
        ValueError: bad arguments, or `data` yields no batch.

    Example:

    ```python
    model.fit(x_train, y_train, batch_size=128, epochs=2)  # stats lag c^2
    kb.update_bn_stats(model, x_train, num_batches=50, batch_size=128)
    model.evaluate(x_test, y_test)  # with the population statistics
    ```

    Reference:
        Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, Section 3
        (precise BN); fvcore `nn.precise_bn.update_bn_stats` (its
        population variance estimator).
    """
    num_batches = positive_int("num_batches", num_batches)
    layers = [
        layer
        for layer in batch_norm_layers(model)
        if layer.trainable and layer.built
    ]
    if not layers:
        return 0
    batches = _batches(data, batch_size)
    pooled = [_PooledMoments(layer.moving_mean.shape) for layer in layers]
    momenta = [layer.momentum for layer in layers]
    # keras_bninit.BatchNormalization and its subclasses; None for Keras's
    # own layer, which always keeps the biased variance.
    conventions = [
        getattr(layer, "moving_variance_convention", None) for layer in layers
    ]
    count = 0
    try:
        # With momentum 0 the layer stores exactly the batch statistics of
        # the call (Keras: moving = m * moving + (1 - m) * batch), and with
        # the biased convention the biased batch variance, which pools.
        for layer, convention in zip(layers, conventions):
            layer.momentum = 0.0
            if convention is not None:
                layer.moving_variance_convention = "biased"
        for batch in batches:
            if count == num_batches:
                break
            inputs = _inputs(batch)
            model(inputs, training=True)
            weight = _batch_size(inputs)
            for layer, moments in zip(layers, pooled):
                moments.add(
                    ops.convert_to_numpy(layer.moving_mean),
                    ops.convert_to_numpy(layer.moving_variance),
                    weight,
                )
            count += 1
    finally:
        for layer, momentum, convention in zip(layers, momenta, conventions):
            layer.momentum = momentum
            if convention is not None:
                layer.moving_variance_convention = convention
    if count == 0:
        raise ValueError("`data` yielded no batch; BN statistics unchanged.")
    for layer, moments in zip(layers, pooled):
        layer.moving_mean.assign(moments.mean)
        layer.moving_variance.assign(moments.variance)
    return count


class PreciseBN(keras.callbacks.Callback):
    """`update_bn_stats` in `model.fit`: after training an epoch, before
    validating it.

    Keras runs validation before `on_epoch_end`, so the statistics are
    recomputed in `on_test_begin` (which `fit` calls for its validation)
    once per trained epoch, and in `on_train_end` if the last epoch was not
    validated. Callbacks that save the model at the end of an epoch
    (checkpoints, best-epoch weights) therefore save the precise statistics,
    and the validation metrics are measured with them. A later
    `model.evaluate(...)` (without this callback) uses them too.

    Args:
        data: what `update_bn_stats` takes (an iterable is iterated afresh
            each epoch), or a callable `data(epoch) -> data` to use e.g. the
            epoch's own training batches. An array needs `batch_size`:
            checked here, not after the first epoch's training.
        num_batches: batches per recomputation, a positive int (200).
        batch_size: the batch size when `data` gives arrays.

    Example:

    ```python
    precise = kb.PreciseBN(x_train, num_batches=50, batch_size=128)
    model.fit(x_train, y_train, batch_size=128, epochs=3,
              validation_data=(x_val, y_val), callbacks=[precise])
    ```

    Reference:
        Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021, Section 3;
        needed after short runs with the paper's c < 1 (Section 3.2).
    """

    def __init__(self, data, num_batches=DEFAULT_NUM_BATCHES, batch_size=None):
        super().__init__()
        self.data = data
        self.num_batches = positive_int("num_batches", num_batches)
        if batch_size is not None:
            batch_size = positive_int("batch_size", batch_size)
        if not callable(data):  # checked now, not after an epoch's training
            _is_array(data, batch_size)
        self.batch_size = batch_size
        self.epoch = None
        self._stale = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._stale = True

    def _update(self):
        if not self._stale:
            return
        data = self.data(self.epoch) if callable(self.data) else self.data
        update_bn_stats(self.model, data, self.num_batches, self.batch_size)
        self._stale = False

    def on_test_begin(self, logs=None):
        self._update()

    def on_train_end(self, logs=None):
        self._update()


_WARNED = set()


class PreciseBNCallback(PreciseBN):
    """The former name of `PreciseBN` (deprecated; warns once)."""

    def __init__(self, *args, **kwargs):
        if "PreciseBNCallback" not in _WARNED:
            _WARNED.add("PreciseBNCallback")
            warnings.warn(
                "keras_bninit.PreciseBNCallback is deprecated; use "
                "keras_bninit.PreciseBN, as Keras names its callbacks.",
                DeprecationWarning,
                stacklevel=2,
            )
        super().__init__(*args, **kwargs)
