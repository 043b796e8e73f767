"""One compiled program per sweep worker: runs share a model's traced steps.

Building a model and tracing and compiling its train and evaluation steps
costs a run's first epoch several times a later one (minutes per program
for ResNet-18 under XLA). Runs whose program is the same share it here:

- The program is the same when every field of the configuration that shapes
  it matches: model, data set (input shape, classes, its image store on the
  memory path), batch size, precision, backend, input path, norm kind,
  jit, steps per execution, the SGD form, momentum and the like, plus one
  structural fact: whether kernels decay (weight decay != 0).
  `program_key` is that key.
- What changes from run to run is state, not program: the seed, c (only an
  initial value), the learning rate and the schedule's numbers, a and the
  weight decay. The optimizer and schedule hold these as variables
  (`keras_bninit.hyperparameters`); the scales' rate is computed from them
  even at a = 1 (`separate_scale_rate`: lr(t) bit for bit), so BASE's
  runs share the method's program where the model is the same (the
  demo's 16 runs compile once). Table 1(a)'s grid (two learning rates,
  three values of c, BASE) compiles twice per worker: once with the input
  BN layer, once for BASE's offline input normalization.
- Each run has a model of its own, not compiled for training, holding
  exactly a fresh build's initial weights under its seed: a fresh build,
  or an earlier run's model of the same program and c with its weights
  drawn again for the new seed (`harness.initial_weights`, where the
  model's initializers allow it: the model zoo's do). These arrays
  (weights, BN moving statistics, RNG states) are assigned into the
  program's model (a build of its own, never saved), the optimizer's
  variables are reset to the values they had when the program was built
  (iterations, momenta, loss scale), and the new hyperparameters are
  written. Keras resets the metrics at every epoch and evaluation. The
  run's own model, given the trained weights, is the one saved
  (`model.keras` holds the run's own config: c and its initializers'
  seeds).
- At most `size` programs are kept, the least recently used dropped first,
  and freed (collected) when dropped. A run that fails or is interrupted
  drops its program: its state is not trusted again.

The data sets a worker trains on are loaded once and kept the same way.
"""

import collections
import contextlib
import dataclasses
import gc
import json
import warnings

import keras
import numpy as np

from keras_bninit.harness import _tf
from keras_bninit.harness.ahead import Ahead, zeros_like_spec
from keras_bninit.harness.config import ETA_MIN
from keras_bninit.harness.initial_weights import Draws, InitialWeights
from keras_bninit.harness.weights_layout import assign_values, read_values
from keras_bninit.norms import norm_layer
from keras_bninit.optimizers import ParamGroupOptimizer, TorchSGD
from keras_bninit.schedules import EpochCosineDecay

# Fields whose values are state of a program, not part of it.
STATE_FIELDS = (
    "seed",
    "gamma",
    "lr",
    "epochs",
    "gamma_lr_divisor",
    "weight_decay",
    "out",
    "verbose",
    "export",
    "precise_bn",
)
# Fields that decide which data a run loads.
DATA_FIELDS = (
    "input",
    "dataset",
    "data_dir",
    "batch_size",
    "input_norm",
    "synthetic_size",
)


def _builder_name(build_model):
    if build_model is None:
        return None
    module = getattr(build_model, "__module__", None)
    name = getattr(build_model, "__qualname__", None) or repr(build_model)
    return f"{module}.{name}"


def program_key(config, build_model=None):
    """The identity of a resolved config's compiled program (a string):
    the fields that shape it and the model builder's name (a builder sent
    to a Ray worker by value is another object with the same name)."""
    fields = dataclasses.asdict(config)
    for name in STATE_FIELDS:
        fields.pop(name)
    fields.update(
        decay=config.weight_decay != 0.0,
        backend=keras.backend.backend(),
        floatx=keras.config.floatx(),
        builder=_builder_name(build_model),
    )
    return json.dumps(fields, sort_keys=True, default=str)


def data_key(config):
    return json.dumps([getattr(config, f) for f in DATA_FIELDS], default=str)


def make_optimizer(config, steps_per_epoch):
    """The run's optimizer: SGD in the configured form with the paper's
    parameter groups and per-epoch cosine schedule (Sections 3.2, 4.2).

    Args:
        config: a resolved `RunConfig`.
        steps_per_epoch: optimizer steps per epoch.
    """
    schedule = EpochCosineDecay(
        config.lr,
        steps_per_epoch,
        config.epochs,
        eta_min=ETA_MIN,
        per_group_floor=config.scale_lr_floor == "per_group",
    )
    sgd = TorchSGD if config.sgd == "torch" else keras.optimizers.SGD
    return ParamGroupOptimizer(
        sgd(schedule, momentum=config.momentum),
        gamma_lr_divisor=config.gamma_lr_divisor,
        weight_decay=config.weight_decay,
        separate_scale_rate=True,  # BASE (a = 1) in the method's program
    )


@contextlib.contextmanager
def _dtype_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_fresh(config, splits, build_model):
    """The run's model, built (not compiled) under its precision."""
    with _dtype_policy(config.precision):
        return build_model(
            config.model,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            bn_gamma=config.gamma,
            input_bn=config.input_norm == "bn",
            activation_std=config.activation_std,
            norm_layer=norm_layer(config.bn),
            moving_variance=config.moving_variance,
        )


def compile_program(config, splits, model):
    """The model `fit` trains (`model`, or it behind the memory path's
    image pipeline), compiled with the paper's optimizer and schedule."""
    with _dtype_policy(config.precision):
        fit_model = splits.fit_model(model)
    optimizer = make_optimizer(config, splits.steps_per_epoch)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    fit_model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False if config.deterministic else config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    build_metrics(fit_model, splits.num_classes)
    return fit_model


def build_metrics(fit_model, num_classes):
    """Creates the compiled metrics' variables now, outside any trace.

    Keras creates them in the train step's first call. On TensorFlow, a
    variable created while `tf.function` traces makes it trace the step
    again without creating any: the first epoch traced the train step
    twice. One eager update on a one-row batch of what the loss takes
    (integer labels, logits) builds them; the metrics are then reset.
    """
    fit_model.compute_metrics(
        None,
        np.zeros((1,), "int64"),
        np.zeros((1, num_classes), "float32"),
    )
    fit_model.reset_metrics()


def _param_groups(optimizer):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.inner_optimizer
    return optimizer


class ProgramMismatch(ValueError):
    """Two models that should be builds of one architecture are not."""


def copy_variables(source, target):
    """Assigns `source`'s variables into `target`'s, position by position
    (two builds of one architecture).

    Raises:
        ProgramMismatch: the variables differ in number, shape or dtype.
    """
    assign_checked(target, read_values(source.variables))


def assign_checked(target, values):
    """Assigns `values` (a build's arrays, in `variables` order) into
    `target`'s variables.

    Raises:
        ProgramMismatch: the arrays differ from the variables in number,
            shape or dtype.
    """
    if len(values) != len(target.variables):
        raise ProgramMismatch(
            f"Cannot share a program: it has {len(target.variables)} "
            f"variables, the run's build {len(values)}"
        )
    for value, dst in zip(values, target.variables):
        dtype = keras.backend.standardize_dtype(dst.dtype)
        given = keras.backend.standardize_dtype(value.dtype)
        if tuple(value.shape) != tuple(dst.shape) or given != dtype:
            raise ProgramMismatch(
                f"Cannot share a program: variable {dst.path} has shape "
                f"{tuple(dst.shape)} {dtype}, the run's build "
                f"{tuple(value.shape)} {given}"
            )
    assign_values(target.variables, values)


class _Program:
    """A compiled model and the optimizer values it started with."""

    def __init__(self, model, fit_model):
        self.model = model
        self.fit_model = fit_model
        optimizer = fit_model.optimizer
        optimizer.build(fit_model.trainable_variables)
        self.initial = [
            np.array(keras.ops.convert_to_numpy(v)) for v in optimizer.variables
        ]
        self.runs = 0

    def reset(self, config, splits, initial):
        """The program's state as a fresh build of `config` starts, whose
        arrays are `initial`."""
        assign_checked(self.model, initial)
        optimizer = self.fit_model.optimizer
        assign_values(optimizer.variables, self.initial)
        groups = _param_groups(optimizer)
        groups.inner_optimizer._learning_rate.set_values(
            config.lr, splits.steps_per_epoch, config.epochs, ETA_MIN
        )
        groups.set_hyperparameters(
            gamma_lr_divisor=config.gamma_lr_divisor,
            weight_decay=config.weight_decay,
        )


class ProgramCache:
    """The compiled programs and loaded data sets of one worker (LRU).

    Args:
        size: the most programs (and data sets) kept; >= 1.
        clear_session: whether dropping a program also clears Keras's
            session (its graphs, TensorFlow's kernel caches), as a sweep
            worker does. A miss that drops nothing keeps the session: on
            TensorFlow, clearing it made the programs kept instantiate
            their steps again (0.45 s for the demo's resnet8).

    Each run's own model (the one saved) is kept too, per program and c,
    at most `2 * size`: the next run of that configuration takes it back
    with its initial weights drawn again for its seed
    (`harness.initial_weights`), instead of a new build, where the model
    allows that.

    Told the runs that come next (`expect`), the worker builds the next
    program it has not built while the current run trains, and traces its
    steps on a thread (`harness.ahead`; TensorFlow and `tf.data` input),
    where a program slot is free.

    Attributes:
        built: how many programs were built (compiled) so far.
        hits: how many runs trained in a program built before them.
        redrawn: how many runs took back an earlier run's model.
        ahead: how many programs were built and traced ahead.
    """

    def __init__(self, size=2, clear_session=True):
        if not (isinstance(size, int) and size >= 1):
            raise ValueError(f"`size` must be an int >= 1. Received: {size!r}")
        self.size = size
        self.clear_session = clear_session
        self._programs = collections.OrderedDict()
        self._splits = collections.OrderedDict()
        # (program key, c) -> (builder, InitialWeights)
        self._run_models = collections.OrderedDict()
        self.built = 0
        self.hits = 0
        self.redrawn = 0
        self.ahead = 0
        self._upcoming = ((), None)  # (configs, build_model) to come
        self._ahead = None  # (program key, the Ahead thread) in flight

    def splits(self, config, load):
        """The run's data, loaded by `load(config)` once per data set."""
        key = data_key(config)
        if key not in self._splits:
            self._splits[key] = load(config)
            while len(self._splits) > self.size:
                self._splits.popitem(last=False)
        self._splits.move_to_end(key)
        return self._splits[key]

    def prepare(self, config, build_model=None):
        """Call before seeding: on a miss, makes room (see `clear_session`
        for what dropping a program frees)."""
        self.wait()
        key = program_key(config, build_model)
        if key in self._programs:
            return
        dropped = False
        while len(self._programs) >= self.size:
            old, _ = self._programs.popitem(last=False)
            self._drop_run_models(old)
            dropped = True
        if dropped and self.clear_session:
            keras.backend.clear_session()  # collects the dropped ones too
        elif dropped:
            gc.collect()

    def acquire(self, config, splits, build_model, seed):
        """Seeds the run and returns `(complex_seed, model, trained,
        fit_model)`: the run's own fresh build (`model`, never compiled for
        training, the one to save), the program's model holding the same
        initial weights (`trained`), and the compiled model `fit` trains
        (`trained`, or it behind the memory path's image pipeline).

        Args:
            seed: `callable() -> complex seed`, called right before the
                run's own build (the program's model of a miss is built
                before it, so the run draws what a fresh process draws).
        """
        self.wait()
        key = program_key(config, build_model)
        program = self._programs.get(key)
        if program is None:  # built apart from any run's model: the saved
            # model is never this one, which keeps no optimizer of its own
            program = self._build(key, config, splits, build_model)
        complex_seed = seed()
        fresh, initial = self._run_model(key, config, splits, build_model)
        try:
            program.reset(config, splits, initial)
        except ProgramMismatch:  # another builder of the same name
            self._programs.pop(key)
            program = self._build(key, config, splits, build_model)
            program.reset(config, splits, initial)
        if program.runs:
            self.hits += 1
        self._programs.move_to_end(key)
        program.runs += 1
        return complex_seed, fresh, program.model, program.fit_model

    def _run_model(self, key, config, splits, build_model):
        """The run's own model and its initial arrays: an earlier run's
        model of the same program and c with its weights drawn again for
        the current seed, or a fresh build (kept for the next run where its
        weights can be drawn again)."""
        run_key = (key, config.gamma)
        builder, kept = self._run_models.get(run_key, (None, None))
        # The same builder object, not only its name (`program_key`): two
        # builders of one name may build different models, and only a
        # build would tell them apart.
        if kept is not None and builder is build_model:
            self._run_models.move_to_end(run_key)
            self.redrawn += 1
            return kept.model, kept.draw()
        with Draws() as draws:
            fresh = build_fresh(config, splits, build_model)
        arrays = read_values(fresh.variables)
        learned = InitialWeights.learn(fresh, draws, arrays)
        self._run_models.pop(run_key, None)
        if learned is not None:
            self._run_models[run_key] = (build_model, learned)
            while len(self._run_models) > 2 * self.size:
                self._run_models.popitem(last=False)
        return fresh, arrays

    def _drop_run_models(self, key):
        for run_key in [k for k in self._run_models if k[0] == key]:
            del self._run_models[run_key]

    def _build(self, key, config, splits, build_model):
        shared = build_fresh(config, splits, build_model)
        program = _Program(shared, compile_program(config, splits, shared))
        self._programs[key] = program
        self.built += 1
        return program

    def discard(self, config, build_model=None):
        """Drops the program of `config` (its state is not trusted)."""
        self.wait()
        self._drop(program_key(config, build_model))

    def _drop(self, key):
        self._drop_run_models(key)
        if self._programs.pop(key, None) is not None:
            gc.collect()

    # -- the next program, ahead -------------------------------------------

    def expect(self, configs, build_model=None):
        """The runs this worker may train next, in order (a sweep's pending
        runs): during the next run, the first of them whose program is not
        built and whose data is that run's gets its program built and
        traced ahead (`ahead_callback`)."""
        self._upcoming = (list(configs), build_model)

    def ahead_callback(self, config, splits, build_model, fit_data, eval_data):
        """A callback for the run of `config` (its builder, `fit` data and
        evaluation data given) that, after the run's first epoch, builds
        the next expected program and traces its steps on a thread; None
        when there is none to build (nothing expected, another builder, no
        free program slot, another backend than TensorFlow, data other than
        `tf.data`: the memory path's runs trace their program at its first
        run)."""
        configs, expected = self._upcoming
        self._upcoming = ((), None)  # once: the run after gets a new list
        if keras.backend.backend() != "tensorflow" or expected not in (
            None,  # the default builder, as `run_experiment` resolves it
            build_model,
        ):
            return None
        if not all(hasattr(d, "element_spec") for d in (fit_data, eval_data)):
            return None  # not tf.data (the memory path's batches of rows)
        for upcoming in configs:
            key = program_key(upcoming, build_model)
            # Its data is this run's, and so is TensorFlow's determinism
            # (global, set at each run's start) while it is traced.
            if (
                data_key(upcoming) == data_key(config)
                and upcoming.deterministic == config.deterministic
                and key not in self._programs
            ):
                break
        else:
            return None
        if len(self._programs) >= self.size:
            return None
        return _AheadCallback(
            lambda: self._start_ahead(
                key, upcoming, splits, build_model, fit_data, eval_data
            )
        )

    def _start_ahead(self, key, config, splits, build_model, fit_data, data):
        # Called during the run `ahead_callback` was asked for, which found
        # the program unbuilt and a slot free (nothing builds in between),
        # after `acquire` had waited for any earlier thread.
        tf, size, built = _tf.tensorflow(), splits.batch_size, self.built
        try:
            train = zeros_like_spec(tf, fit_data.element_spec, size)
            evaluation = zeros_like_spec(tf, data.element_spec, size)
            if train is None or evaluation is None:
                return
            program = self._build(key, config, splits, build_model)
            fit_model = program.fit_model
            fit_model.make_train_function()
            fit_model.make_test_function()
        except Exception:  # noqa: BLE001 - the run that needs it reports it
            self.built = built
            self._drop(key)
            return
        ahead = Ahead(fit_model, train, evaluation)
        self._ahead = (key, ahead)
        self.ahead += 1
        ahead.start()

    def wait(self):
        """Waits for the program being traced ahead, if any; one whose
        tracing failed is dropped (its first run builds it again)."""
        key, ahead = self._ahead or (None, None)
        self._ahead = None
        if ahead is None:
            return
        ahead.join()
        if ahead.error is not None:
            self._drop(key)
            warnings.warn(
                "Tracing the next program ahead failed "
                f"({type(ahead.error).__name__}: {ahead.error}); its first "
                "run builds it again.",
                RuntimeWarning,
                stacklevel=2,
            )


class _AheadCallback(keras.callbacks.Callback):
    """Calls `start()` once, at the end of the first epoch `fit` trains
    (after the checkpoint: put it after `RunState`)."""

    def __init__(self, start):
        super().__init__()
        self._start = start

    def on_epoch_end(self, epoch, logs=None):
        start, self._start = self._start, None
        if start is not None and not self.model.stop_training:
            start()


_WORKER = {}


def worker_programs():
    """This process's `ProgramCache` (a sweep worker's, Ray's included)."""
    if "cache" not in _WORKER:
        _WORKER["cache"] = ProgramCache()
    return _WORKER["cache"]
