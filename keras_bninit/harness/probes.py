"""Measurements of BN layers on a probe batch, behind the diagnostics.

`find_batch_norms` finds every BN layer (nested models included),
`probe_statistics` runs one forward pass and captures each BN head's
output statistics, `large_values` and `gradient_factors` summarize them.
The callbacks of `keras_bninit.harness.diagnostics` record these during
training; the functions are usable on their own.
"""

import inspect

import keras
import numpy as np
from keras import ops

DEFAULT_THRESHOLDS = (3.0, 6.0)
DEFAULT_PROBE_SIZE = 128

# Names of the running statistics that BN layers keep beside their
# parameters; everything else that is one value per channel is a parameter.
_STATISTIC_PREFIXES = ("moving_", "renorm_")


# ---------------------------------------------------------------- discovery


def find_batch_norms(model):
    """Every BN layer of `model`, in layer order, with a unique name.

    Walks `model` recursively (nested models, layers inside layers) and
    keeps every `keras.layers.BatchNormalization` instance, subclasses
    included. A layer inside a nested model is named `outer/inner`; a layer
    reachable twice is listed once.

    Args:
        model: a Keras model or layer.

    Returns:
        A list of `(name, layer)` pairs.
    """
    found, seen, used = [], set(), {}

    def visit(layer, prefix):
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            if isinstance(child, keras.layers.BatchNormalization):
                name = prefix + child.name
                used[name] = used.get(name, 0) + 1
                if used[name] > 1:
                    name = f"{name}#{used[name]}"
                found.append((name, child))
            else:
                visit(child, f"{prefix}{child.name}/")

    visit(model, "")
    return found


def _children(layer):
    # `Model.layers` is in topological order for functional models; plain
    # layers expose their tracked sublayers only as `_layers`.
    layers = getattr(layer, "layers", None)
    if layers is None:
        layers = getattr(layer, "_layers", [])
    return list(layers)


def per_channel_weights(layer):
    """The per-channel parameters of one BN layer, by variable name.

    gamma and beta when present, plus any other one-dimensional weight of
    the layer (e.g. `rho`, `w`, `b` of the alternative formulations), so
    new BN variants are covered without being known here. The running
    statistics (`moving_*`, `renorm_*`) are excluded.

    Args:
        layer: a built `keras.layers.BatchNormalization`.

    Returns:
        A dict `{name: variable}` in the layer's weight order.
    """
    weights = {}
    for variable in layer.weights:
        name = variable.name.split("/")[-1]
        if name.startswith(_STATISTIC_PREFIXES) or len(variable.shape) != 1:
            continue
        key, n = name, 1
        while key in weights:
            n += 1
            key = f"{name}_{n}"
        weights[key] = variable
    return weights


# ------------------------------------------------------------- probe batch


class ProbeBatch:
    """A fixed batch of inputs on which the BN heads are examined.

    It is resolved once, lazily: an array (or a dict/list of arrays for a
    multi-input model) is used as is; a tuple is read as Keras reads
    `(x, y[, sample_weight])` and only x is kept; a `tf.data.Dataset` or
    any other iterable gives its first element. At most `max_examples`
    examples are kept.

    The statistics of one forward pass are cached per model and training
    step, so monitors sharing a `ProbeBatch` pay for one pass per epoch.

    Args:
        data: the probe inputs, as above.
        max_examples: how many examples to keep (default 128).
    """

    def __init__(self, data, max_examples=DEFAULT_PROBE_SIZE):
        if data is None:
            raise ValueError(
                "The probe batch is required: pass an array, an (x, y) "
                "tuple or a dataset. Received: data=None"
            )
        if isinstance(max_examples, bool) or int(max_examples) < 1:
            raise ValueError(
                "`max_examples` must be a positive integer. "
                f"Received: max_examples={max_examples!r}"
            )
        self._data = data
        self.max_examples = int(max_examples)
        self._x = None
        self._thresholds = set()
        self._cache_key = None
        self._cache = None
        self._compiled = {}

    @property
    def x(self):
        """The probe inputs (resolved on first access)."""
        if self._x is None:
            self._x = _resolve_probe(self._data, self.max_examples)
            self._data = None
        return self._x

    def require(self, thresholds):
        """Adds |x_hat| thresholds to those every pass counts."""
        self._thresholds.update(float(t) for t in thresholds)

    def statistics(self, model, thresholds=()):
        """Per-layer statistics of the BN heads on this batch.

        As `probe_statistics`, but the pass is compiled once per model
        (with the TensorFlow backend) and its result is cached per model and
        optimizer step; it counts the union of every threshold required of
        this probe so far.
        """
        self.require(thresholds)
        thresholds = tuple(sorted(self._thresholds))
        key = (id(model), _optimizer_step(model), thresholds)
        if key[1] is None or key != self._cache_key:
            tensors = self._pass(model, thresholds)(self.x)
            self._cache = _to_numpy(model, tensors, thresholds)
            self._cache_key = key
        return self._cache

    def _pass(self, model, thresholds):
        key = (id(model), thresholds)
        if key not in self._compiled:

            def run(x):
                return _probe_pass(model, x, thresholds)

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                run = tf.function(run)
            self._compiled = {key: run}  # one model at a time
        return self._compiled[key]


def _resolve_probe(data, max_examples):
    if isinstance(data, tuple):
        data = data[0]
    elif not _is_batch(data):
        data = next(iter(data))
        if isinstance(data, tuple):
            data = data[0]
    return keras.tree.map_structure(
        lambda a: ops.convert_to_tensor(a)[:max_examples], data
    )


def _is_batch(data):
    if isinstance(data, dict | list):
        return True
    return hasattr(data, "shape") and hasattr(data, "dtype")


def _optimizer_step(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "built", False):
        return None
    return int(ops.convert_to_numpy(optimizer.iterations))


def probe_statistics(model, x, thresholds=DEFAULT_THRESHOLDS):
    """Statistics of every BN head of `model` on the batch `x`.

    Runs one forward pass in which every BN layer uses the batch statistics
    of `x` (as in training), while all other layers run in inference mode
    (no dropout); the BN running statistics are restored afterwards, so the
    model is left unchanged. For each BN layer, on its input x:
    mu_B, var_B per channel (biased, over all axes but the channel axis),
    x_hat = (x - mu_B) / sqrt(var_B + eps) (Section 3.1).

    The inputs are captured by wrapping each BN layer's `call` for the
    duration of the pass, so functional, sequential, nested and subclassed
    models all work. A BN layer called more than once in a pass (a shared
    layer) is described by its first call.

    Args:
        model: a built Keras model.
        x: the probe inputs, a batch as accepted by `model(x)`.
        thresholds: |x_hat| thresholds to count values above.

    Returns:
        A dict `{layer_name: stats}` in layer order (layers the pass did not
        reach are left out), with `stats` a dict of: `var` (per-channel
        var_B, float64 array), `epsilon`, `n` (number of values),
        `max_abs` (max |x_hat|), `count_above` (`{threshold: count}`) and
        `layer` (the layer object).
    """
    thresholds = [float(t) for t in thresholds]
    return _to_numpy(model, _probe_pass(model, x, thresholds), thresholds)


def _probe_pass(model, x, thresholds):
    # Returns {layer_name: {statistic: tensor}}; runs eagerly or inside a
    # `tf.function` (then the wrappers are only needed while tracing, and
    # the reads, BN updates and restores keep their program order).
    layers = find_batch_norms(model)
    captured = {}
    saved = [
        (v, ops.copy(v.value))
        for _, layer in layers
        for v in layer.non_trainable_weights
    ]
    try:
        for _, layer in layers:
            _install_probe(layer, captured, thresholds)
        model(x, training=False)
    finally:
        for _, layer in layers:
            layer.__dict__.pop("call", None)
        for variable, value in saved:
            variable.assign(value)
    return {
        name: captured[id(layer)]
        for name, layer in layers
        if id(layer) in captured
    }


def _to_numpy(model, tensors, thresholds):
    layers = dict(find_batch_norms(model))
    result = {}
    for name, stats in tensors.items():
        stats = {key: ops.convert_to_numpy(v) for key, v in stats.items()}
        result[name] = {
            "layer": layers[name],
            "var": stats["var"].astype(np.float64),
            "epsilon": float(layers[name].epsilon),
            "n": int(stats["n"]),
            "max_abs": float(stats["max_abs"]),
            "count_above": {
                t: int(c)
                for t, c in zip(thresholds, stats["counts"], strict=True)
            },
        }
    return result


def _install_probe(layer, captured, thresholds):
    # Instance attribute shadows the class's `call`; `Layer.__call__` looks
    # `call` up on the instance, so this reaches every call of the layer.
    call = layer.call
    signature = inspect.signature(call)

    def probed_call(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        if id(layer) not in captured:
            inputs = next(iter(bound.arguments.values()))
            captured[id(layer)] = _head_statistics(layer, inputs, thresholds)
        if "training" in signature.parameters:
            bound.arguments["training"] = True
        return call(*bound.args, **bound.kwargs)

    object.__setattr__(layer, "call", probed_call)


def _head_statistics(layer, inputs, thresholds):
    x = ops.cast(inputs, "float32")
    ndim = len(x.shape)
    axis = layer.axis % ndim
    reduce = [i for i in range(ndim) if i != axis]
    # Two passes (mean, then centered squares): exact for inputs whose mean
    # is large compared with their spread.
    mean = ops.mean(x, axis=reduce, keepdims=True)
    centered = x - mean
    var = ops.mean(ops.square(centered), axis=reduce, keepdims=True)
    x_hat = ops.abs(centered / ops.sqrt(var + layer.epsilon))
    counts = [ops.sum(ops.cast(x_hat > t, "int32")) for t in thresholds]
    return {
        "var": ops.reshape(var, (-1,)),
        "n": ops.size(x_hat),
        "max_abs": ops.max(x_hat),
        "counts": ops.stack(counts) if counts else ops.zeros((0,), "int32"),
    }


def gradient_factors(model, x, scale_fn=None):
    """The BN gradient factor gamma / sqrt(var_B + eps) of every BN layer.

    var_B is the batch variance of the layer's input on `x` (Section 3.3):
    at initialization with one c for every BN and fan-in weights, the
    factors of interior layers are about equal across layers and
    independent of c. The magnitude |gamma| is used: a negative scale
    flips the gradient's sign but does not change its size.

    Args:
        model: a built Keras model.
        x: a batch of inputs.
        scale_fn: optional `fn(layer) -> per-channel scale`, for BN variants
            whose effective scale is not `gamma` alone (e.g. A2's
            rho * gamma). Default: `gamma`, or 1 for a layer without scale.

    Returns:
        A dict `{layer_name: per-channel factors (float64 array)}`.
    """
    return _factors(probe_statistics(model, x, ()), scale_fn)


def _factors(statistics, scale_fn):
    factors = {}
    for name, stats in statistics.items():
        scale = _scale(stats["layer"], scale_fn)
        # |gamma|: a negative scale flips the gradient's sign, not its size.
        factors[name] = np.abs(scale) / np.sqrt(stats["var"] + stats["epsilon"])
    return factors


def _scale(layer, scale_fn):
    if scale_fn is not None:
        return np.asarray(scale_fn(layer), dtype=np.float64)
    if getattr(layer, "gamma", None) is not None:
        return ops.convert_to_numpy(layer.gamma).astype(np.float64)
    return np.float64(1.0)


def large_values(model, x, thresholds=DEFAULT_THRESHOLDS):
    """How often the BN heads of `model` produce large |x_hat| on `x`.

    Args:
        model: a built Keras model.
        x: a batch of inputs.
        thresholds: |x_hat| thresholds (default 3 and 6).

    Returns:
        A dict `{layer_name: {"n", "max_abs", "frac_above": {t: fraction}}}`
        where the fraction counts values with |x_hat| > t.
    """
    statistics = probe_statistics(model, x, thresholds)
    return {
        name: _large_value_summary(stats, thresholds)
        for name, stats in statistics.items()
    }


def _large_value_summary(stats, thresholds):
    n = stats["n"]
    return {
        "n": n,
        "max_abs": stats["max_abs"],
        "frac_above": {
            float(t): stats["count_above"][float(t)] / n for t in thresholds
        },
    }
