"""Diagnostics of batch normalization: see what the paper saw.

The paper's motivation rests on two observations and one argument:

- trained BN scales and shifts stay close to their initial values
  (`BNParameterTracker`);
- the BN head x_hat = (x - mu_B) / sqrt(var_B + eps) produces overly large
  values (|x_hat| of 6 and more) that pass forward (`LargeValueMonitor`,
  SPEC section 1);
- the gradient factor gamma / sqrt(var_B + eps) of every BN does not depend
  on the common initial scale c, and fan-in initialization balances it
  across layers (`GradientFactorMonitor`, SPEC section 4).

The three are ordinary `keras.callbacks.Callback`s, usable in any
`model.fit`. Each writes JSON lines to a run directory (one file each, the
fields are documented on the class) and, optionally, scalars and histograms
to TensorBoard. `diagnostic_callbacks` builds all three around one shared
probe batch; `plot_run` draws PNGs from a run directory. Nothing here is
active unless a callback is passed to `fit`: the layers themselves carry no
hooks, so disabled diagnostics cost nothing.

Overhead, measured with `benchmarks/diagnostics_overhead.py` (input BN and
3 x conv-BN-ReLU with 32 channels on sklearn digits, 1437 training images,
batch 32, the default 128-image probe, all three callbacks every epoch, on
a 2-core CPU shared with other jobs): 9.8 ms per epoch spent in the
callbacks, 4.3 % of the fastest plain epoch (0.23 s); the epoch times with
and without differed by less than the machine's noise. There is also a
one-time cost at the start of `fit` (about 0.3 to 0.4 s: tracing the probe pass
and the initial record). The per-epoch cost is one forward pass of the
probe batch (shared by the two probe monitors, compiled with
`tf.function` under the TensorFlow backend) plus a copy of the BN weights,
independent of the training set's size, so on real data sets the relative
overhead is smaller.

BN layers are found recursively (nested models and layers included) as
every instance of `keras.layers.BatchNormalization`, subclasses included
(`InputBatchNorm`, the alternative formulations of SPEC sections 6, 7).
"""

import importlib.util
import inspect
import json
import math
import os

import keras
import numpy as np
from keras import ops

from keras_bninit._validation import positive_int

BN_PARAMS_FILE = "bn_params.jsonl"
BN_VECTORS_FILE = "bn_params_vectors.json"
LARGE_VALUES_FILE = "large_values.jsonl"
GRAD_FACTORS_FILE = "grad_factors.jsonl"

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
    x_hat = (x - mu_B) / sqrt(var_B + eps) (SPEC section 1).

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

    var_B is the batch variance of the layer's input on `x` (SPEC section
    4): at initialization with one c for every BN and fan-in weights, the
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


# --------------------------------------------------------------- callbacks


class _RunLogCallback(keras.callbacks.Callback):
    """Shared plumbing: schedule, JSON lines, TensorBoard.

    Records at initialization (the first `on_train_begin`), after every
    `every` completed epochs, and after the last epoch of each `fit` if it
    was not already recorded. `epoch` in the records counts completed
    epochs (0 = initialization).
    """

    filename = None

    def __init__(self, run_dir, every=1, tensorboard_dir=None):
        super().__init__()
        positive_int("every", every)
        if tensorboard_dir is not None and not _has_tensorboard():
            raise ValueError(
                "Writing to TensorBoard needs the `tensorboard` package "
                "(pip install tensorboard). "
                f"Received: tensorboard_dir={tensorboard_dir!r}"
            )
        self.run_dir = os.fspath(run_dir)
        self.every = every
        self.tensorboard_dir = tensorboard_dir
        self.path = os.path.join(self.run_dir, self.filename)
        self._started = False
        self._last_recorded = None
        self._last_epoch = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self._started:
            return
        self._started = True
        os.makedirs(self.run_dir, exist_ok=True)
        open(self.path, "w").close()
        self._record_now(0)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch + 1
        if self._last_epoch % self.every == 0:
            self._record_now(self._last_epoch)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and (
            self._last_recorded != self._last_epoch
        ):
            self._record_now(self._last_epoch)
        if self._writer is not None:
            self._writer.flush()

    def _record_now(self, epoch):
        self._last_recorded = epoch
        rows = self.record(epoch)
        step = _optimizer_step(self.model) or 0
        with open(self.path, "a") as f:
            for row in rows:
                row = {"epoch": epoch, "step": step, **row}
                f.write(json.dumps(row, default=_json_default) + "\n")
        if self.tensorboard_dir is not None:
            self._write_tensorboard(epoch, rows)

    def record(self, epoch):
        """Returns the rows (dicts) to log at `epoch`."""
        raise NotImplementedError

    def _tensorboard_values(self, row):
        """`(tag, scalar)` pairs of one row for TensorBoard."""
        return []

    def _write_tensorboard(self, epoch, rows):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(
                os.fspath(self.tensorboard_dir)
            )
        with self._writer.as_default():
            for row in rows:
                for tag, value in self._tensorboard_values(row):
                    tf.summary.scalar(tag, value, step=epoch)
            self._write_histograms(epoch, tf)

    def _write_histograms(self, epoch, tf):
        pass


def _has_tensorboard():
    return importlib.util.find_spec("tensorboard") is not None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Not JSON serializable: {value!r}")


def _summary(values):
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


class BNParameterTracker(_RunLogCallback):
    """Records how far the BN scales and shifts move from their init.

    Per BN layer and per-channel parameter (gamma, beta when present, and
    any other per-channel weight of a BN variant, see
    `per_channel_weights`), at initialization and every `every` epochs:
    summary statistics and the mean absolute drift from the initial values.
    The paper's observation: trained gammas and betas stay close to where
    they started, so their initial value matters.

    Files in `run_dir`:

    - `bn_params.jsonl`, one line per (record, layer, parameter), fields:
      `epoch` (completed epochs, 0 = initialization), `step` (optimizer
      iterations), `layer`, `weight` (e.g. "gamma"), `channels`, `mean`,
      `std`, `min`, `max` (over channels), `drift` (mean over channels of
      |w - w_0|), `max_drift` (max of |w - w_0|).
    - `bn_params_vectors.json`: `{"init_epoch": 0, "end_epoch": E,
      "init": {layer: {weight: [values]}}, "end": {...}}`, the full
      per-channel vectors at initialization and at the latest record.

    Args:
        run_dir: directory for the files (created).
        every: record every this many epochs (default 1).
        tensorboard_dir: if given, also write scalars (`bn/<layer>/<weight>`
            mean and drift) and histograms there.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 3.2 (the trained parameters stay close to their init).
    """

    filename = BN_PARAMS_FILE

    def __init__(self, run_dir, every=1, tensorboard_dir=None):
        super().__init__(run_dir, every, tensorboard_dir)
        self.vectors_path = os.path.join(self.run_dir, BN_VECTORS_FILE)
        self._initial = None
        self._current = None

    def _snapshot(self):
        return {
            name: {
                key: ops.convert_to_numpy(v).astype(np.float64)
                for key, v in per_channel_weights(layer).items()
            }
            for name, layer in find_batch_norms(self.model)
        }

    def record(self, epoch):
        self._current = self._snapshot()
        if self._initial is None:
            self._initial = self._current
        rows = []
        for name, weights in self._current.items():
            for key, values in weights.items():
                initial = self._initial.get(name, {}).get(key, values)
                drift = np.abs(values - initial)
                rows.append(
                    {
                        "layer": name,
                        "weight": key,
                        "channels": int(values.size),
                        **_summary(values),
                        "drift": float(drift.mean()),
                        "max_drift": float(drift.max()),
                    }
                )
        self._write_vectors(epoch)
        return rows

    def _write_vectors(self, epoch):
        def as_lists(snapshot):
            return {
                name: {key: v.tolist() for key, v in weights.items()}
                for name, weights in snapshot.items()
            }

        content = {
            "init_epoch": 0,
            "end_epoch": epoch,
            "init": as_lists(self._initial),
            "end": as_lists(self._current),
        }
        with open(self.vectors_path, "w") as f:
            json.dump(content, f)

    def _tensorboard_values(self, row):
        tag = f"bn/{row['layer']}/{row['weight']}"
        return [(f"{tag}_mean", row["mean"]), (f"{tag}_drift", row["drift"])]

    def _write_histograms(self, epoch, tf):
        for name, weights in self._current.items():
            for key, values in weights.items():
                tf.summary.histogram(f"bn/{name}/{key}", values, step=epoch)


class _ProbeCallback(_RunLogCallback):
    def __init__(
        self,
        probe,
        run_dir,
        every=1,
        tensorboard_dir=None,
        max_examples=DEFAULT_PROBE_SIZE,
    ):
        super().__init__(run_dir, every, tensorboard_dir)
        if not isinstance(probe, ProbeBatch):
            probe = ProbeBatch(probe, max_examples=max_examples)
        self.probe = probe


class LargeValueMonitor(_ProbeCallback):
    """Records how often each BN head produces large normalized values.

    On a fixed probe batch, per BN layer, with batch statistics of the
    probe (as in training): the fraction of |x_hat| above each threshold
    and the max |x_hat|, x_hat = (x - mu_B) / sqrt(var_B + eps) on the
    layer's input (SPEC section 1). For a unit Gaussian the fractions above
    3 and 6 are 0.27 % and 2e-9; much more means heavy tails, values that a
    large gamma passes forward. See `probe_statistics` for how the inputs
    are captured.

    File `large_values.jsonl` in `run_dir`, one line per (record, layer),
    fields: `epoch` (completed epochs, 0 = initialization), `step`,
    `layer`, `n` (number of values: examples x positions x channels),
    `max_abs`, and `frac_above_<t>` for each threshold t (e.g.
    `frac_above_3`, `frac_above_6`), the fraction of values with
    |x_hat| > t.

    Args:
        probe: the probe batch: an array, an `(x, y)` tuple, a dataset (its
            first batch), or a `ProbeBatch` (share one between monitors to
            run one forward pass for both).
        run_dir: directory for the file (created).
        thresholds: |x_hat| thresholds (default 3 and 6).
        every: record every this many epochs (default 1).
        tensorboard_dir: if given, also write the scalars there.
        max_examples: probe size cap when `probe` is not a `ProbeBatch`.

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Sections 3.1, 3.2 (the BN head; its overly large values).
    """

    filename = LARGE_VALUES_FILE

    def __init__(
        self,
        probe,
        run_dir,
        thresholds=DEFAULT_THRESHOLDS,
        every=1,
        tensorboard_dir=None,
        max_examples=DEFAULT_PROBE_SIZE,
    ):
        super().__init__(probe, run_dir, every, tensorboard_dir, max_examples)
        thresholds = tuple(float(t) for t in thresholds)
        if not thresholds or any(
            not math.isfinite(t) or t <= 0 for t in thresholds
        ):
            raise ValueError(
                "`thresholds` must be finite numbers > 0. "
                f"Received: thresholds={thresholds!r}"
            )
        self.thresholds = thresholds
        self.probe.require(thresholds)

    def record(self, epoch):
        statistics = self.probe.statistics(self.model, self.thresholds)
        rows = []
        for name, stats in statistics.items():
            summary = _large_value_summary(stats, self.thresholds)
            row = {"layer": name, "n": summary["n"]}
            row["max_abs"] = summary["max_abs"]
            for t, fraction in summary["frac_above"].items():
                row[_frac_key(t)] = fraction
            rows.append(row)
        return rows

    def _tensorboard_values(self, row):
        return [
            (f"large_values/{row['layer']}/{key}", row[key])
            for key in row
            if key == "max_abs" or key.startswith("frac_above_")
        ]


def _frac_key(threshold):
    return f"frac_above_{threshold:g}"


class GradientFactorMonitor(_ProbeCallback):
    """Records the BN gradient factor gamma / sqrt(var_B + eps) per layer.

    Back-propagation through a BN multiplies the gradient by this factor
    (SPEC section 4). var_B is the batch variance of the layer's input on
    the probe batch. At initialization with one c for every BN and fan-in
    weights, the factors of interior layers are about equal and do not
    depend on c; this monitor lets you check that on your model and watch
    the factors during training. As in `gradient_factors`, the magnitude
    |gamma| is used (trained scales can turn negative).

    File `grad_factors.jsonl` in `run_dir`, one line per (record, layer),
    fields: `epoch` (completed epochs, 0 = initialization), `step`,
    `layer`, `channels`, and `mean`, `std`, `min`, `max` of the factor over
    channels.

    Args:
        probe: the probe batch (see `LargeValueMonitor`).
        run_dir: directory for the file (created).
        every: record every this many epochs (default 1).
        tensorboard_dir: if given, also write the scalars there.
        max_examples: probe size cap when `probe` is not a `ProbeBatch`.
        scale_fn: optional `fn(layer) -> per-channel scale` for BN variants
            whose effective scale is not gamma alone (default: gamma, or 1
            without scale).

    Reference:
        Davis & Frank, "Revisiting Batch Norm Initialization", ECCV 2022,
        Section 3.3 (BN gradients: the factor does not depend on c).
    """

    filename = GRAD_FACTORS_FILE

    def __init__(
        self,
        probe,
        run_dir,
        every=1,
        tensorboard_dir=None,
        max_examples=DEFAULT_PROBE_SIZE,
        scale_fn=None,
    ):
        super().__init__(probe, run_dir, every, tensorboard_dir, max_examples)
        self.scale_fn = scale_fn

    def record(self, epoch):
        statistics = self.probe.statistics(self.model)
        factors = _factors(statistics, self.scale_fn)
        return [
            {"layer": name, "channels": int(f.size), **_summary(f)}
            for name, f in factors.items()
        ]

    def _tensorboard_values(self, row):
        tag = f"grad_factor/{row['layer']}"
        return [(f"{tag}/mean", row["mean"]), (f"{tag}/max", row["max"])]


def diagnostic_callbacks(
    run_dir,
    probe,
    every=1,
    thresholds=DEFAULT_THRESHOLDS,
    tensorboard=False,
    max_examples=DEFAULT_PROBE_SIZE,
):
    """The three diagnostics callbacks, sharing one probe batch.

    Args:
        run_dir: directory for the JSON lines files.
        probe: the probe batch (see `ProbeBatch`).
        every: record every this many epochs (default 1).
        thresholds: |x_hat| thresholds of `LargeValueMonitor`.
        tensorboard: also write to TensorBoard, in `run_dir/tensorboard`.
        max_examples: probe size cap (default 128).

    Returns:
        `[BNParameterTracker, LargeValueMonitor, GradientFactorMonitor]`.
    """
    if not isinstance(probe, ProbeBatch):
        probe = ProbeBatch(probe, max_examples=max_examples)
    log_dir = os.path.join(run_dir, "tensorboard") if tensorboard else None
    return [
        BNParameterTracker(run_dir, every, tensorboard_dir=log_dir),
        LargeValueMonitor(
            probe, run_dir, thresholds, every, tensorboard_dir=log_dir
        ),
        GradientFactorMonitor(probe, run_dir, every, tensorboard_dir=log_dir),
    ]


# -------------------------------------------------------------------- plots


def read_jsonl(path):
    """The records of a JSON lines file, as a list of dicts."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(run_dir, out_dir=None):
    """Draws the diagnostics of a run directory as PNG files.

    One figure per file found (missing files are skipped):

    - `bn_params_init_vs_end.png`: per layer, the distribution of each BN
      parameter at initialization and at the end (the paper's "they barely
      move" picture), and the values of all layers pooled;
    - `bn_drift.png`: mean |w - w_0| per layer over epochs;
    - `large_values.png`: fraction of |x_hat| above each threshold and max
      |x_hat| per layer, at initialization and at the end;
    - `grad_factors.png`: |gamma| / sqrt(var_B + eps) per layer (mean and
      min-max over channels), at initialization and at the end.

    Args:
        run_dir: a directory written by the callbacks of this module.
        out_dir: where to write the PNGs (default: `run_dir/plots`).

    Returns:
        The list of PNG paths written.
    """
    run_dir = os.fspath(run_dir)
    out_dir = os.fspath(out_dir or os.path.join(run_dir, "plots"))
    os.makedirs(out_dir, exist_ok=True)
    plots = [
        (BN_VECTORS_FILE, _plot_init_vs_end, "bn_params_init_vs_end.png"),
        (BN_PARAMS_FILE, _plot_drift, "bn_drift.png"),
        (LARGE_VALUES_FILE, _plot_large_values, "large_values.png"),
        (GRAD_FACTORS_FILE, _plot_grad_factors, "grad_factors.png"),
    ]
    written = []
    for source, draw, name in plots:
        source = os.path.join(run_dir, source)
        if not os.path.exists(source):
            continue
        if source.endswith(".jsonl"):
            data = read_jsonl(source)
        else:
            with open(source) as f:
                data = json.load(f)
        if not data:
            continue
        figure = draw(data)
        path = os.path.join(out_dir, name)
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def _figure(rows, cols, width, height):
    # A bare Figure renders with Agg and leaves pyplot's global state (and
    # the user's interactive backend) alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def _layer_axis(ax, layers):
    ax.set_xticks(range(len(layers)))
    size = 8 if len(layers) <= 30 else 6
    ax.set_xticklabels(layers, rotation=90, fontsize=size)
    ax.set_xlabel("BN layer (input to output)")


def _plot_init_vs_end(data):
    init, end = data["init"], data["end"]
    layers = list(init)
    weights = list(dict.fromkeys(k for layer in layers for k in init[layer]))
    figure, axes = _figure(
        len(weights), 2, max(9, 0.3 * len(layers) + 5), 3.6 * len(weights)
    )
    epoch = data["end_epoch"]
    for row, key in enumerate(weights):
        ax, hist = axes[row]
        have = [layer for layer in layers if key in init[layer]]
        positions = np.arange(len(have))
        for values, shift, color, label in (
            (init, -0.2, "tab:gray", "initialization"),
            (end, 0.2, "tab:blue", f"after epoch {epoch}"),
        ):
            parts = ax.boxplot(
                [values[layer][key] for layer in have],
                positions=positions + shift,
                widths=0.35,
                whis=(0, 100),
                patch_artist=True,
                showfliers=False,
                manage_ticks=False,
            )
            for box in parts["boxes"]:
                box.set(facecolor=color, alpha=0.6, edgecolor=color)
            ax.plot([], [], "s", color=color, label=label)
        _layer_axis(ax, have)
        ax.set_ylabel(f"{key} (per channel)")
        ax.set_title(
            f"{key} per layer, initialization vs end "
            "(box: quartiles, whiskers: min to max)",
            fontsize=10,
        )
        ax.legend(fontsize=8)
        pooled_init = np.concatenate([init[lay][key] for lay in have])
        pooled_end = np.concatenate([end[lay][key] for lay in have])
        low = min(pooled_init.min(), pooled_end.min())
        high = max(pooled_init.max(), pooled_end.max())
        if high - low < 1e-6:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 41)
        hist.hist(pooled_init, bins, color="tab:gray", alpha=0.6, label="init")
        hist.hist(
            pooled_end,
            bins,
            color="tab:blue",
            alpha=0.6,
            label=f"epoch {epoch}",
        )
        hist.set_xlabel(f"{key} value")
        hist.set_ylabel("channels (all layers)")
        hist.set_title(f"{key}, all layers pooled")
        hist.legend(fontsize=8)
    return figure


def _by_layer(rows):
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    epochs = sorted({row["epoch"] for row in rows})
    return layers, epochs


def _layer_colors(layers):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, len(layers) - 1)) for i in range(len(layers))]


def _plot_drift(rows):
    from matplotlib.ticker import MaxNLocator

    layers, _ = _by_layer(rows)
    weights = list(dict.fromkeys(row["weight"] for row in rows))
    figure, axes = _figure(1, len(weights), 5.5 * len(weights), 4.2)
    colors = _layer_colors(layers)
    for ax, key in zip(axes[0], weights, strict=True):
        for layer, color in zip(layers, colors, strict=True):
            points = sorted(
                (row["epoch"], row["drift"])
                for row in rows
                if row["layer"] == layer and row["weight"] == key
            )
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker=".", color=color, label=layer)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0 = initialization)")
        ax.set_ylabel(f"mean |{key} - {key}_0| over channels")
        ax.set_title(f"{key} drift from initialization")
        _layer_legend(figure, ax, layers, colors)
    return figure


def _layer_legend(figure, ax, layers, colors):
    if len(layers) <= 12:
        ax.legend(fontsize=7, title="BN layer", title_fontsize=7)
        return
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    mappable = ScalarMappable(Normalize(0, len(layers) - 1), "viridis")
    bar = figure.colorbar(
        mappable, ax=ax, label="BN layer index (0 = nearest the input)"
    )
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()


def _first_and_last(rows):
    layers, epochs = _by_layer(rows)
    table = {(row["epoch"], row["layer"]): row for row in rows}
    chosen = [epochs[0]] + ([epochs[-1]] if len(epochs) > 1 else [])
    return layers, chosen, table


def _epoch_label(epoch):
    return "initialization" if epoch == 0 else f"after epoch {epoch}"


def _plot_large_values(rows):
    layers, chosen, table = _first_and_last(rows)
    keys = [key for key in rows[0] if key.startswith("frac_above_")]
    figure, axes = _figure(1, 2, max(11, 0.4 * len(layers) + 6), 4.5)
    frac_ax, max_ax = axes[0]
    x = np.arange(len(layers))
    styles = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "v")]
    for i, epoch in enumerate(chosen):
        color = "tab:gray" if i == 0 else "tab:red"
        for key, (style, marker) in zip(keys, styles * len(keys), strict=False):
            y = [
                100 * table.get((epoch, layer), {}).get(key, np.nan)
                for layer in layers
            ]
            threshold = key[len("frac_above_") :]
            frac_ax.plot(
                x,
                y,
                style,
                marker=marker,
                color=color,
                label=f"|x_hat| > {threshold}, {_epoch_label(epoch)}",
            )
        y = [
            table.get((epoch, layer), {}).get("max_abs", np.nan)
            for layer in layers
        ]
        max_ax.plot(x, y, marker="o", color=color, label=_epoch_label(epoch))
    frac_ax.set_yscale("symlog", linthresh=1e-3)
    frac_ax.set_ylabel("values above threshold (% of probe values)")
    frac_ax.set_title("Large values of the BN head x_hat per layer")
    frac_ax.legend(fontsize=7)
    max_ax.set_ylabel("max |x_hat| on the probe batch")
    max_ax.set_title("Largest normalized value per layer")
    max_ax.legend(fontsize=7)
    for ax in (frac_ax, max_ax):
        _layer_axis(ax, layers)
    return figure


def _plot_grad_factors(rows):
    layers, chosen, table = _first_and_last(rows)
    figure, axes = _figure(1, 1, max(8, 0.35 * len(layers) + 4), 4.5)
    ax = axes[0][0]
    x = np.arange(len(layers))
    for i, epoch in enumerate(chosen):
        color = "tab:gray" if i == 0 else "tab:green"
        get = [table.get((epoch, layer), {}) for layer in layers]
        mean = [r.get("mean", np.nan) for r in get]
        low = [r.get("min", np.nan) for r in get]
        high = [r.get("max", np.nan) for r in get]
        ax.fill_between(x, low, high, color=color, alpha=0.2)
        ax.plot(
            x,
            mean,
            marker="o",
            color=color,
            label=f"{_epoch_label(epoch)}: mean (band: min to max)",
        )
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))

    def minor_label(value, _):
        # Label 2, 3, 5 x 10^k only when the axis spans a decade or so.
        low, high = ax.get_ylim()
        few = math.log10(high / low) <= 1.5
        return f"{value:g}" if few and f"{value:e}"[0] in "235" else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.set_ylabel("|gamma| / sqrt(var_B + eps), per channel")
    ax.set_title("BN gradient factor per layer (SPEC section 4)")
    ax.legend(fontsize=8)
    _layer_axis(ax, layers)
    return figure
