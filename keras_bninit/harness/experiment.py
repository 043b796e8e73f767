"""One training run, end to end with model.fit (Section 4.2).

`run_experiment(RunConfig(...))` loads the data, builds the model through
the model zoo, trains it with `ParamGroupOptimizer(SGD(momentum=0.9))` and a
per-epoch cosine schedule, keeps the weights of the epoch with the best
validation accuracy, evaluates them on the test split and writes one result
record. Everything that can be wrong with the arguments or the data is
checked before anything is written. An interrupted run resumes from its
last completed epoch when it is started again with the same configuration:
checkpoints are committed atomically (`RunState`), so a process killed at
any moment, even inside a write, resumes or, at worst, restarts the run.
"""

import dataclasses
import math
import os
import platform
import sys
import time
import warnings

import keras
import numpy as np

from keras_bninit.activations import activation_std
from keras_bninit.harness import _io, _tf
from keras_bninit.harness import config as _config
from keras_bninit.harness._keras_saving import fill_saving_caches
from keras_bninit.harness.bounds import check_data
from keras_bninit.harness.checkpoints import RunState, assign_state
from keras_bninit.harness.config import (
    RunConfig,
    apply_ablation,
)
from keras_bninit.harness.precheck import check_machine
from keras_bninit.harness.programs import (
    ProgramCache,
    copy_variables,
    make_optimizer,
)
from keras_bninit.harness.splits import EpochTracker
from keras_bninit.layers import PAPER_MOMENTUM
from keras_bninit.precise_bn import PreciseBN
from keras_bninit.seeding import set_seed

__all__ = [
    "RunConfig",
    "apply_ablation",
    "make_optimizer",
    "run_experiment",
    "validate",
]


def validate(config):
    """Raises one `ValueError` for the first bad field or the first thing
    this machine cannot give it (`config.validate`, then
    `check_environment`)."""
    _config.validate(config)
    check_environment(config)


def check_environment(config):
    """Raises `ValueError` if this machine cannot run `config`: the data
    set is neither a name nor a directory, the backend lacks what a field
    needs (a SavedModel, tf.data, steps per execution on torch), the
    output folder cannot be written, or the run's folder holds a symbolic
    link (nothing is ever written through one). Called once per run."""
    backend = keras.backend.backend()
    # The data set's name, tf.data, steps per execution on torch, an
    # output path that is a file: the command line's checks before Keras.
    check_machine(config, backend)
    activation_std(config.activation_std)  # a name must be a known one
    if config.export and backend != "tensorflow":
        raise ValueError(
            "export=True (a SavedModel) needs the TensorFlow backend; Keras "
            f"runs on {backend!r}. The run's model.keras loads on every "
            "backend."
        )
    check_output_dir(config.out)
    _io.refuse_links(os.path.join(config.out, config.run_name()))


def check_output_dir(path):
    """Raises `ValueError` unless `path` is, or can be made, a directory.

    The nearest existing ancestor must be a writable directory: an output
    path inside a file, or under a directory this user cannot write, is
    refused before anything is loaded or written.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(
            f"The output path {path!r} is a file; give a directory."
        )
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(
            f"The output path {path!r} is inside the file {parent!r}; "
            "give a directory."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"The output path {path!r} cannot be written: {parent!r} is not "
            "writable by this user."
        )


def _default_builder():
    """The model zoo's builder and names (`keras_bninit.models`)."""
    from keras_bninit import models

    return models.build, models.available()


def _versions():
    import importlib.metadata

    from keras_bninit import __version__

    tensorflow = None
    if _tf.available():  # read without importing it (off the tf.data path)
        try:
            tensorflow = importlib.metadata.version("tensorflow")
        except importlib.metadata.PackageNotFoundError:
            tensorflow = getattr(
                sys.modules.get("tensorflow"), "__version__", None
            )
    return {
        "keras_bninit": __version__,
        "tensorflow": tensorflow,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# A share momentum^T of the running variance's start (1) is left after T
# steps; relative to the variance it should estimate (about c^2 in later
# layers, Section 3.2) it must fall below 10 %: T > log(0.1 c^2) / log(0.9),
# 66 steps for c = 0.1.
_STALE_SHARE = 0.1


def _warn_short_statistics(config, steps_per_epoch):
    """Warns when the BN running statistics cannot have settled."""
    if config.gamma >= 1.0:
        return
    steps = steps_per_epoch * config.epochs
    needed = math.log(_STALE_SHARE * config.gamma**2) / math.log(PAPER_MOMENTUM)
    if steps < needed:
        warnings.warn(
            f"{steps} optimizer steps are too few for the BN running "
            f"statistics with c = {config.gamma:g} (about {math.ceil(needed)} "
            "needed): evaluation may be near chance. Use --precise-bn "
            "(RunConfig(precise_bn=200)) to recompute them after each epoch.",
            stacklevel=3,
        )


def _history(entries):
    keys = sorted({k for e in entries for k in e if k != "epoch"})
    return {k: [e.get(k) for e in entries] for k in keys}


def run_experiment(config, build_model=None, callbacks=(), programs=None):
    """Trains one configuration and returns its result record.

    Args:
        config: a `RunConfig` (or a dict of its fields).
        build_model: `callable(name, **kwargs) -> keras.Model`; defaults to
            the package's model zoo (`keras_bninit.models.build`).
        callbacks: extra Keras callbacks for `model.fit`.
        programs: a `harness.programs.ProgramCache` whose compiled program
            and data the run may share with earlier runs (a sweep worker's);
            None: the run builds and compiles its own.

    Returns:
        The result record (also written to `<out>/<run name>/result.json`):
        `config`, `status` ("ok" or "failed"), `reason`, `complex_seed`,
        `val_accuracy`, `test_accuracy`, `best_epoch` (1-based), `history`,
        `wall_time_s`, `images_per_s`, `data`, `versions`, `run_dir`.
        A completed run is not trained again: its record is returned.

    Raises:
        ValueError: a bad configuration (nothing is written).
        harness.data.DatasetUnavailableError: the data set is not on
            this machine (nothing is written).
        harness.bounds.BadInputError: a ValueError, the data cannot serve
            the batch size or steps per execution (nothing is written).
    """
    start = time.perf_counter()
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    _config.validate(config)
    config = config.resolved()
    check_environment(config)
    if build_model is None:
        build_model, names = _default_builder()
        if config.model not in names:
            raise ValueError(
                f"Unknown model {config.model!r}. Valid: {', '.join(names)}"
            )
    run_dir = os.path.join(config.out, config.run_name())
    result_path = os.path.join(run_dir, "result.json")
    done = read_trusted_result(run_dir, config)
    if done is not None:
        # A process killed after the result was written left its backup.
        if os.path.isdir(os.path.join(run_dir, "backup")):
            RunState(run_dir).delete()
        return done

    # -- data and model: every failure here happens before any write -------
    if programs is None:
        programs = ProgramCache(size=1, clear_session=False)
    splits = programs.splits(config, _load_splits)
    check_data(config, splits)  # BadInputError: nothing written yet
    programs.prepare(config, build_model)
    try:
        complex_seed, model, trained, fit_model = programs.acquire(
            config,
            splits,
            build_model,
            seed=lambda: _seed_run(config),
        )
        record, state = _train(
            config,
            splits,
            (model, trained, fit_model),
            callbacks,
            ahead=lambda *data: programs.ahead_callback(
                config, splits, build_model, *data
            ),
        )
    except BaseException:
        programs.discard(config, build_model)  # its state: not trusted
        raise
    if record["status"] != "ok":
        programs.discard(config, build_model)
    record["complex_seed"] = complex_seed
    train_time = sum(e["epoch_time_s"] for e in state.entries)
    # Epochs of earlier, interrupted invocations count; this invocation's
    # own epochs are inside its elapsed time already.
    elapsed = time.perf_counter() - start
    record["wall_time_s"] = elapsed + train_time - state.session_epoch_time
    _io.atomic_write_json(result_path, record)
    state.delete()  # only now: the result is committed
    return record


def _seed_run(config):
    """`set_seed` for the run, keeping TensorFlow's compiled steps (see
    `harness._tf.seeding_keeps_caches`)."""
    with _tf.seeding_keeps_caches():
        return set_seed(config.seed, deterministic=config.deterministic)


def _train(config, splits, models, callbacks, ahead):
    """Trains the run in `fit_model` (whose model is `trained`), evaluates
    it and saves `model` (`models`: the three); returns the record (not
    yet written) and the run's `RunState`. `ahead(fit data, validation
    data)`: a callback to put after the checkpoints, or None."""
    model, trained, fit_model = models
    run_dir = os.path.join(config.out, config.run_name())

    # -- train -------------------------------------------------------------
    os.makedirs(run_dir, exist_ok=True)
    _io.atomic_write_json(
        os.path.join(run_dir, "config.json"), dataclasses.asdict(config)
    )
    tracker = EpochTracker()
    state = RunState(run_dir)
    initial_epoch = state.restore(fit_model)
    callbacks = _callbacks(config, splits, run_dir, callbacks)
    train_data, steps_per_epoch = splits.fit_inputs(
        config.seed, tracker, config.epochs, config.steps_per_execution
    )
    val_data, val_steps = splits.eval_inputs("val", config.steps_per_execution)
    last = ahead(train_data, val_data)
    try:
        fit_model.fit(
            train_data,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_data,
            validation_steps=val_steps,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,
            verbose=1 if config.verbose == 1 else 0,  # 2: EpochLine
            callbacks=[
                tracker,
                keras.callbacks.TerminateOnNaN(),
                *callbacks,
                state,
                *([last] if last is not None else []),
            ],
        )
    finally:  # a checkpoint written in the background is committed
        state.wait()
    record = _evaluate(config, splits, model, trained, fit_model, state)
    return record, state


def _evaluate(config, splits, model, trained, fit_model, state):
    """The result record of a trained run: the best epoch's weights on the
    test split, `model.keras` (and the SavedModel) written; or a failed
    record with the reason."""
    run_dir = state.run_dir
    entries = state.entries
    record = {
        "config": dataclasses.asdict(config),
        "status": "ok",
        "reason": None,
        "history": _history(entries),
        "data": splits.describe(),
        "versions": _versions(),
        "run_dir": os.path.abspath(run_dir),
        "val_accuracy": None,
        "test_accuracy": None,
        "best_epoch": None,
    }
    train_time = sum(e["epoch_time_s"] for e in entries)
    record["images_per_s"] = (
        splits.num_train * len(entries) / train_time if train_time else None
    )
    if state.failure is not None or len(entries) < config.epochs:
        record["status"] = "failed"
        record["reason"] = state.failure or "training stopped early"
        return record
    best_epoch, val_accuracy = state.best()
    fill_saving_caches()  # for load_weights and model.save below
    best_values = state.best_values()
    if best_values is not None:  # the same arrays as the file, in memory
        assign_state(fit_model, best_values)
    else:
        fit_model.load_weights(state.best_weights_path())
    test_data, test_steps = splits.eval_inputs(
        "test", config.steps_per_execution
    )
    test = fit_model.evaluate(
        test_data, steps=test_steps, verbose=0, return_dict=True
    )
    record.update(
        val_accuracy=val_accuracy,
        test_accuracy=float(test["accuracy"]),
        best_epoch=best_epoch + 1,
    )
    if model is not trained:  # the run's own build, trained in a shared one
        copy_variables(trained, model)
    if model is not fit_model:  # saved with its optimizer, as compiled
        model.compile(fit_model.optimizer, fit_model.loss, metrics=["accuracy"])
    _io.ensure_space(  # weights and optimizer state, zipped as they are
        run_dir,
        sum(
            int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in [*model.weights, *model.optimizer.variables]
        ),
    )
    model.save(os.path.join(run_dir, "model.keras"))
    if config.export:
        model.export(os.path.join(run_dir, "saved_model"), verbose=False)
    return record


def _load_splits(config):
    """The data set on the run's input path."""
    if config.input == "memory":
        from keras_bninit.harness.memory import load_memory_dataset as load
    else:
        from keras_bninit.harness.data import load_dataset as load
    return load(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        input_norm=config.input_norm,
        size=config.synthetic_size,
    )


def _callbacks(config, splits, run_dir, callbacks):
    """Precise BN first (before validation), then the caller's, then the
    diagnostics."""
    callbacks = list(callbacks)
    if config.verbose == 2:  # after the others: validation is done then
        callbacks.append(EpochLine(config.epochs))
    if config.precise_bn:
        # Each epoch's own (augmented) training batches, up to N of them.
        callbacks.insert(
            0,
            PreciseBN(
                lambda epoch: splits.train_data(config.seed, epoch),
                num_batches=config.precise_bn,
            ),
        )
    else:
        _warn_short_statistics(config, splits.steps_per_epoch)
    if config.diagnostics:
        from keras_bninit.harness.diagnostics import diagnostic_callbacks

        callbacks += diagnostic_callbacks(
            os.path.join(run_dir, "diagnostics"), probe=splits.probe()
        )
    return callbacks


class EpochLine(keras.callbacks.Callback):
    """One plain line per epoch, for logs in files: loss, accuracy,
    validation accuracy, the epoch's learning rate and its time, without
    progress bars, carriage returns or escapes (`RunConfig(verbose=2)`)."""

    def __init__(self, epochs, stream=None):
        super().__init__()
        self.epochs = epochs
        self.stream = stream
        self._start = self._lr = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        try:  # the rate of the epoch's steps (the schedule is per epoch)
            rate = self.model.optimizer.learning_rate
            self._lr = float(keras.ops.convert_to_numpy(rate))
        except (AttributeError, TypeError, ValueError):
            self._lr = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if key in logs:
                parts.append(f"{key} {float(logs[key]):.4f}")
        if self._lr is not None:
            parts.append(f"lr {self._lr:.4g}")
        # 0.01 s: a short epoch (0.4 s of digits) rounded to 0.1 s would
        # be off by up to 12 %, and sweep shares are read from these lines.
        parts.append(f"{time.perf_counter() - self._start:.2f} s")
        print(", ".join(parts), file=self.stream or sys.stdout, flush=True)


def read_trusted_result(run_dir, config):
    """The run's result.json if it is this run's and well formed, else
    None: a record of another configuration or seed, or with fields of
    the wrong type, is set aside (renamed `result.json.invalid-<time>`,
    never deleted) with a warning naming it, and the run is done again."""
    path = os.path.join(run_dir, "result.json")
    record = _io.read_result(path)
    if record is None:
        return None
    problem = _record_problem(record, config)
    if problem is None:
        return record
    aside = f"{path}.invalid-{time.strftime('%Y%m%dT%H%M%S')}"
    os.replace(path, aside)
    warnings.warn(
        f"{path} {problem}; set aside as {os.path.basename(aside)}, the run "
        "is done again",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def _record_problem(record, config):
    """What is wrong with a result record for `config`, or None."""
    if record.get("status") not in ("ok", "failed"):
        return f"has no valid status ({record.get('status')!r})"
    stored = record.get("config")
    if not isinstance(stored, dict):
        return "has no configuration"
    try:
        same = _config.config_key(stored) == config.key() and (
            stored.get("seed") == config.seed
        )
    except TypeError:
        same = False
    if not same:
        return (
            f"belongs to another run (seed {stored.get('seed')!r}, not "
            f"{config.seed}, or another configuration)"
        )
    if record["status"] == "failed":
        return None
    for name in ("test_accuracy", "val_accuracy"):
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"has a {name} that is not a number ({value!r})"
        if not 0.0 <= value <= 1.0:
            return f"has a {name} outside [0, 1] ({value!r})"
    best = record.get("best_epoch")
    if isinstance(best, bool) or not isinstance(best, int) or best < 1:
        return f"has a best_epoch that is not an epoch ({best!r})"
    return None
