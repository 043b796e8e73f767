"""Diagnostics of batch normalization: see what the paper saw.

The paper's motivation rests on two observations and one argument:

- trained BN scales and shifts stay close to their initial values
  (`BNParameterTracker`);
- the BN head x_hat = (x - mu_B) / sqrt(var_B + eps) produces overly large
  values (|x_hat| of 6 and more) that pass forward (`LargeValueMonitor`,
  Section 3.1);
- the gradient factor gamma / sqrt(var_B + eps) of every BN does not depend
  on the common initial scale c, and fan-in initialization balances it
  across layers (`GradientFactorMonitor`, Section 3.3).

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
(`InputBatchNorm`, the alternative formulations of Sections 4.4, 4.5).
"""

import importlib.util
import json
import math
import os

import keras
import numpy as np
from keras import ops

from keras_bninit._validation import positive_int
from keras_bninit.harness.probes import (  # noqa: F401  (public here too)
    DEFAULT_PROBE_SIZE,
    DEFAULT_THRESHOLDS,
    ProbeBatch,
    _factors,
    _large_value_summary,
    _optimizer_step,
    find_batch_norms,
    gradient_factors,
    large_values,
    per_channel_weights,
    probe_statistics,
)

BN_PARAMS_FILE = "bn_params.jsonl"
BN_VECTORS_FILE = "bn_params_vectors.json"
LARGE_VALUES_FILE = "large_values.jsonl"
GRAD_FACTORS_FILE = "grad_factors.jsonl"


# --------------------------------------------------------------- callbacks


class _RunLogCallback(keras.callbacks.Callback):
    """Shared plumbing: schedule, JSON lines, TensorBoard.

    Records at initialization (the first `on_train_begin`), after every
    `every` completed epochs, and after the last epoch of each `fit` if it
    was not already recorded. `epoch` in the records counts completed
    epochs (0 = initialization).

    A file already in `run_dir` is the log of the run being resumed (from
    `harness.checkpoints.RunState` or `fit(initial_epoch=...)`):
    when the first epoch E begins, the rows of epochs after E (written by
    a process killed before its checkpoint) are dropped, so a resumed run
    has one row per (epoch, step, layer, ...) as an uninterrupted one.
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
        self._resuming = False
        self._last_recorded = None
        self._last_epoch = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self._started:
            return
        self._started = True
        os.makedirs(self.run_dir, exist_ok=True)
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            # A resumed run: the first epoch Keras begins says where.
            self._resuming = True
            return
        open(self.path, "w").close()
        self._record_now(0)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resuming:
            return
        self._resuming = False
        self._resume(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch + 1
        if self._last_epoch % self.every == 0:
            self._record_now(self._last_epoch)

    def _resume(self, epoch):
        """Keeps the rows of epochs <= `epoch`, drops those of re-run ones.

        A process killed after writing the rows of an epoch whose
        checkpoint did not commit trains that epoch again; its rows are
        replaced, so the file has one row per (epoch, step, layer, ...).
        """
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # a line torn by a kill
                    continue
                if isinstance(row, dict) and row.get("epoch", 0) <= epoch:
                    kept.append(line if line.endswith("\n") else line + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._restore(epoch)
        if not any(json.loads(line).get("epoch") == epoch for line in kept):
            self._record_now(epoch)
        else:
            self._last_recorded = epoch

    def _restore(self, epoch):
        """Subclass hook: reload state kept across a resume."""

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
    - `bn_params_vectors.json`: `{"init_epoch": 0, "init_step": N,
      "end_epoch": E, "init": {layer: {weight: [values]}}, "end": {...}}`,
      the full per-channel vectors when the callbacks were attached (at
      initialization when N = 0, after N optimizer steps when the model
      was trained before) and at the latest record.

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
        self._initial_step = 0
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
            self._initial_step = _optimizer_step(self.model) or 0
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
            # Optimizer steps before the callbacks were attached: 0 from
            # initialization, N when the model was trained before.
            "init_step": self._initial_step,
            "end_epoch": epoch,
            "init": as_lists(self._initial),
            "end": as_lists(self._current),
        }
        tmp = self.vectors_path + ".tmp"  # written aside, then renamed
        with open(tmp, "w") as f:
            json.dump(content, f)  # layer order kept: no sorted keys
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.vectors_path)

    def _restore(self, epoch):
        # Drifts are from the initialization, not from the resumed state.
        try:
            with open(self.vectors_path) as f:
                content = json.load(f)
            init = content["init"]
        except (OSError, ValueError, KeyError):
            return  # drifts then count from the resumed state
        self._initial_step = content.get("init_step", 0)
        self._initial = {
            name: {k: np.asarray(v, np.float64) for k, v in weights.items()}
            for name, weights in init.items()
        }

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
    layer's input (Section 3.1). For a unit Gaussian the fractions above
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
    (Section 3.3). var_B is the batch variance of the layer's input on
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
