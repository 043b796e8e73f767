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

from keras_bninit._validation import (
    non_negative_int,
    positive_float,
    positive_int,
)
from keras_bninit.activations import activation_std
from keras_bninit.harness import _io, _tf
from keras_bninit.harness.checkpoints import RunState
from keras_bninit.harness.datasets import (
    DATASETS,
    SYNTHETIC,
    EpochTracker,
    available_datasets,
)
from keras_bninit.harness.stats import BASELINE_OVERRIDES
from keras_bninit.harness.store import config_key
from keras_bninit.layers import PAPER_MOMENTUM
from keras_bninit.norms import NORM_LAYERS, norm_layer
from keras_bninit.optimizers import ParamGroupOptimizer, TorchSGD
from keras_bninit.precise_bn import PreciseBNCallback
from keras_bninit.schedules import EpochCosineDecay
from keras_bninit.seeding import set_seed

INPUT_NORMS = ("bn", "fixed", "offline", "none")
# The proposal's defaults (Section 3.2), and the related methods'
# (Section 4.5: RBN and IEBN are trained like BASE unless asked otherwise).
PROPOSAL_DEFAULTS = {"gamma": 0.1, "gamma_lr_divisor": 100.0}
RELATED = ("rbn", "rbn-", "iebn", "iebn-")
RELATED_DEFAULTS = {"gamma": 1.0, "gamma_lr_divisor": 1.0}
ABLATIONS = ("init-only", "lr-only")

# The paper's settings per data set (Sections 4.1, 4.2); digits is the
# offline demo, sized for a CPU.
DATASET_DEFAULTS = {
    "cifar10": {"model": "resnet18", "epochs": 180, "lr": 0.1},
    "cifar100": {"model": "resnet34", "epochs": 180, "lr": 0.1},
    "caltech_birds2011": {"model": "resnet50", "epochs": 180, "lr": 0.1},
    "cars196": {"model": "resnet50", "epochs": 180, "lr": 0.1},
    "digits": {"model": "resnet8", "epochs": 15, "lr": 0.1},
    "directory": {"model": "resnet18", "epochs": 180, "lr": 0.1},
    "synthetic": {"model": "resnet18", "epochs": 3, "lr": 0.1},
}

# The input paths (`harness.data`: tf.data; `harness.memory`: the images
# on the accelerator, rows of indices per step). The default is the faster
# one on each backend, as measured by benchmarks/harness.py (README).
INPUTS = ("tfdata", "memory")
DEFAULT_INPUT = {"tensorflow": "tfdata", "jax": "memory", "torch": "memory"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass
class RunConfig:
    """Everything that defines one run; stored beside its result.

    Attributes:
        dataset: a name from `harness.data.available_datasets()` or
            the path of a directory of class subfolders.
        model: a model-zoo name; None takes the paper's model for the data
            set (ResNet-18 for CIFAR-10, ...).
        lr: the base learning rate alpha; None takes 0.1.
        gamma: the constant c every BN scale starts at (Section 3.2); None takes
            0.1, or 1 for the related methods RBN/IEBN (trained like BASE
            unless asked, Section 4.5).
        gamma_lr_divisor: a, the BN scales' learning-rate divisor (Section 3.2);
            None takes 100, or 1 for RBN/IEBN.
        weight_decay: coupled L2 on conv/dense kernels (1e-4).
        momentum: SGD momentum (0.9).
        epochs: None takes the data set's default (180 in the paper).
        batch_size: None takes the data set's default (128 or 64).
        seed: the run seed n; every generator is seeded with
            `make_complex(n)` (Section 4.3).
        bn: the BN formulation: one of `keras_bninit.NORM_LAYERS`.
        input_norm: "bn" (InputBatchNorm, the paper's proposal), "fixed",
            "offline" or "none" (Section 3.4).
        activation_std: sigma_act for the InputBatchNorm scale (0.58).
        deterministic: turn on TensorFlow op determinism (and no XLA), so
            the same seed gives the same numbers.
        jit_compile: passed to `model.compile` ("auto", True, False).
        out: the directory that receives the run's own directory.
        export: also export the best model as a SavedModel.
        diagnostics: record BN diagnostics (keras_bninit.harness.diagnostics).
        verbose: Keras's verbosity: 1 progress bar, 2 a line per epoch,
            0 nothing.
        data_dir: tensorflow-datasets' data directory, which may also hold
            a prepared `.npz` or CIFAR's python pickles (`harness.datasets`).
        precise_bn: 0 (the paper's protocol: BN running statistics as
            moving averages), or N > 0 to recompute them after each epoch,
            before validation, as population statistics over up to N training
            batches (`keras_bninit.update_bn_stats`; for short runs).
        torch_parity: train with `keras_bninit.TorchSGD`, PyTorch's
            momentum form (lr outside the buffer), instead of Keras's SGD;
            the two differ only when the learning rate changes.
        input: the input path, "tfdata" (`harness.data`) or "memory"
            (`harness.memory`, no TensorFlow needed); None takes the
            faster one for the Keras backend (`DEFAULT_INPUT`). The two draw
            different augmentations, so it is part of the run's identity.
        precision: "float32" (the paper's), "mixed_bfloat16" or
            "mixed_float16" (with dynamic loss scaling): the Keras dtype
            policy the model is built and trained under.
        steps_per_execution: Keras's `steps_per_execution`: optimizer steps
            per dispatch (not on PyTorch). Epochs, the per-epoch schedule
            and checkpoints are unchanged; the numbers too.
        synthetic_size: training images of `dataset="synthetic"` before the
            validation split (None: 50,000, CIFAR-10's).
    """

    dataset: str = "digits"
    model: str | None = None
    lr: float | None = None
    gamma: float | None = None
    gamma_lr_divisor: float | None = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 1
    bn: str = "standard"
    input_norm: str = "bn"
    activation_std: float = 0.58
    deterministic: bool = False
    jit_compile: str | bool = "auto"
    out: str = "runs"
    export: bool = False
    diagnostics: bool = False
    verbose: int = 1
    data_dir: str | None = None
    precise_bn: int = 0
    torch_parity: bool = False
    input: str | None = None
    precision: str = "float32"
    steps_per_execution: int = 1
    synthetic_size: int | None = None

    @classmethod
    def baseline(cls, **kwargs):
        """BASE: c = 1, a = 1, standard BN, the input BN kept (Section 3.2)."""
        return cls(**{**kwargs, **BASELINE_OVERRIDES})

    @classmethod
    def from_dict(cls, values):
        """A config from a dict, rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(
                f"Unknown run configuration fields {unknown}; valid fields: "
                f"{sorted(names)}"
            )
        return cls(**values)

    def resolved(self):
        """A copy with the data set's defaults filled in, validated."""
        validate(self)
        name = self.dataset if self.dataset in DATASETS else "directory"
        defaults = DATASET_DEFAULTS[name]
        method = RELATED_DEFAULTS if self.bn in RELATED else PROPOSAL_DEFAULTS
        return dataclasses.replace(
            self,
            gamma=float(method["gamma"] if self.gamma is None else self.gamma),
            gamma_lr_divisor=float(
                method["gamma_lr_divisor"]
                if self.gamma_lr_divisor is None
                else self.gamma_lr_divisor
            ),
            model=self.model or defaults["model"],
            lr=float(self.lr if self.lr is not None else defaults["lr"]),
            epochs=self.epochs or defaults["epochs"],
            batch_size=self.batch_size or DATASETS[name].batch_size,
            input=self.input or DEFAULT_INPUT[keras.backend.backend()],
        )

    def key(self):
        """`harness.store.config_key` of the resolved configuration."""
        return config_key(dataclasses.asdict(self.resolved()))

    def run_name(self):
        """A readable, unique directory name for this run."""
        c = self.resolved()
        dataset = os.path.basename(os.path.normpath(c.dataset))
        return (
            f"{dataset}-{c.model}-{c.bn}-lr{c.lr:g}-c{c.gamma:g}"
            f"-a{c.gamma_lr_divisor:g}-s{c.seed}-{c.key()[:8]}"
        )


def apply_ablation(config, ablation):
    """The paper's ablations (Section 3.2): init only or LR only.

    Args:
        config: a `RunConfig`.
        ablation: "init-only" (c < 1 kept, a = 1) or "lr-only" (c = 1,
            a kept).
    """
    if ablation == "init-only":
        return dataclasses.replace(config, gamma_lr_divisor=1.0)
    if ablation == "lr-only":
        return dataclasses.replace(
            config,
            gamma=1.0,
            gamma_lr_divisor=config.gamma_lr_divisor
            or PROPOSAL_DEFAULTS["gamma_lr_divisor"],
        )
    raise ValueError(
        f"Unknown ablation {ablation!r}. Valid: {', '.join(ABLATIONS)}"
    )


def validate(config):
    """Raises one `ValueError` for the first bad field, naming valid values."""
    if not isinstance(config, RunConfig):
        raise ValueError(f"Expected a RunConfig. Received: {config!r}")
    if config.dataset not in DATASETS and not os.path.isdir(
        str(config.dataset)
    ):
        names = [d for d in available_datasets() if d != "directory"]
        raise ValueError(
            f"Unknown data set {config.dataset!r}. Valid: {', '.join(names)}, "
            "or the path of a directory of class subfolders."
        )
    for name in ("gamma", "gamma_lr_divisor", "lr"):
        if getattr(config, name) is not None:
            _float32(name, positive_float(name, getattr(config, name)))
    for name in ("weight_decay", "momentum"):
        value = positive_float(name, getattr(config, name), allow_zero=True)
        _float32(name, value)
    _float32("activation_std", activation_std(config.activation_std))
    for name in ("epochs", "batch_size"):
        if getattr(config, name) is not None:
            positive_int(name, getattr(config, name))
    non_negative_int("seed", config.seed)
    if config.export and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "export=True (a SavedModel) needs the TensorFlow backend; Keras "
            f"runs on {keras.backend.backend()!r}. The run's model.keras "
            "loads on every backend."
        )
    if config.seed >= SEED_LIMIT:
        raise ValueError(
            f"`seed` must be < 2**31 ({SEED_LIMIT}). Received: "
            f"seed={config.seed}"
        )
    non_negative_int("precise_bn", config.precise_bn)
    if not isinstance(config.torch_parity, bool):
        raise ValueError(
            "`torch_parity` must be True or False. "
            f"Received: torch_parity={config.torch_parity!r}"
        )
    _check_input_options(config)
    if config.bn not in NORM_LAYERS:
        raise ValueError(
            f"Unknown BN formulation {config.bn!r}. Valid: "
            f"{', '.join(NORM_LAYERS)}"
        )
    if config.input_norm not in INPUT_NORMS:
        raise ValueError(
            f"Unknown input normalization {config.input_norm!r}. Valid: "
            f"{', '.join(INPUT_NORMS)}"
        )
    if os.path.exists(config.out) and not os.path.isdir(config.out):
        raise ValueError(
            f"The output path {config.out!r} is a file; give a directory."
        )
    check_output_dir(config.out)


def _check_input_options(config):
    """The input path, precision, steps per execution and synthetic size."""
    backend = keras.backend.backend()
    if config.input is not None and config.input not in INPUTS:
        raise ValueError(
            f"Unknown input path {config.input!r}. Valid: {', '.join(INPUTS)}"
        )
    if config.input == "tfdata" and not _tf.available():
        raise ValueError(
            "input='tfdata' needs TensorFlow, which is not installed; use "
            "input='memory' (--input memory)."
        )
    if config.precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision {config.precision!r}. Valid: "
            f"{', '.join(PRECISIONS)}"
        )
    positive_int("steps_per_execution", config.steps_per_execution)
    if config.steps_per_execution > 1 and backend == "torch":
        raise ValueError(
            "steps_per_execution > 1 is not supported by Keras on the torch "
            f"backend. Received: steps_per_execution="
            f"{config.steps_per_execution}; use 1 or --backend jax/tensorflow."
        )
    if config.synthetic_size is not None:
        if config.dataset != SYNTHETIC:
            raise ValueError(
                "synthetic_size is for dataset='synthetic' only. Received: "
                f"synthetic_size={config.synthetic_size!r}, "
                f"dataset={config.dataset!r}"
            )
        positive_int("synthetic_size", config.synthetic_size)
        if config.synthetic_size < 20:
            raise ValueError(
                "synthetic_size must be >= 20 (10 classes, each in training "
                "and validation). Received: synthetic_size="
                f"{config.synthetic_size}"
            )


# Seeds fit a signed 32-bit integer (TensorFlow's and NumPy's seeds).
SEED_LIMIT = 2**31


def _float32(name, value):
    """Checks that `value` stays finite, and non-zero, in float32."""
    with np.errstate(over="ignore", under="ignore"):
        single = np.float32(value)
    if not np.isfinite(single) or (value != 0 and single == 0):
        raise ValueError(
            f"`{name}` must be representable in float32 (finite, and "
            f"non-zero when non-zero: about 1e-38 to 3.4e38). Received: "
            f"{name}={value!r}"
        )
    return value


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
    # The library does not depend on the model zoo; it finds it at run
    # time when the caller gives no builder (train.py passes models.build).
    try:
        import models
    except ImportError as error:
        raise ValueError(
            "run_experiment needs a model builder: pass "
            "build_model=models.build (the package's model zoo) or your own "
            "callable(name, **kwargs) -> keras.Model."
        ) from error
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


def run_experiment(config, build_model=None, callbacks=()):
    """Trains one configuration and returns its result record.

    Args:
        config: a `RunConfig` (or a dict of its fields).
        build_model: `callable(name, **kwargs) -> keras.Model`; defaults to
            the package's model zoo (`models.build`).
        callbacks: extra Keras callbacks for `model.fit`.

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
    """
    start = time.perf_counter()
    if isinstance(config, dict):
        config = RunConfig.from_dict(config)
    config = config.resolved()
    if build_model is None:
        build_model, names = _default_builder()
        if config.model not in names:
            raise ValueError(
                f"Unknown model {config.model!r}. Valid: {', '.join(names)}"
            )
    run_dir = os.path.join(config.out, config.run_name())
    result_path = os.path.join(run_dir, "result.json")
    done = _read_result(result_path)
    if done is not None:
        # A process killed after the result was written left its backup.
        if os.path.isdir(os.path.join(run_dir, "backup")):
            RunState(run_dir).delete()
        return done

    # -- data and model: every failure here happens before any write -------
    splits = _load_splits(config)
    complex_seed = set_seed(config.seed, deterministic=config.deterministic)
    model, fit_model = _build(config, splits, build_model)

    # -- train -------------------------------------------------------------
    os.makedirs(run_dir, exist_ok=True)
    _io.atomic_write_json(
        os.path.join(run_dir, "config.json"), dataclasses.asdict(config)
    )
    tracker = EpochTracker()
    state = RunState(run_dir)
    initial_epoch = state.restore(fit_model)
    callbacks = _callbacks(config, splits, run_dir, callbacks)
    try:
        fit_model.fit(
            splits.fit_train_data(config.seed, tracker),
            validation_data=splits.eval_data("val"),
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            shuffle=False,
            verbose=config.verbose,
            callbacks=[
                tracker,
                keras.callbacks.TerminateOnNaN(),
                *callbacks,
                state,
            ],
        )
    finally:  # a checkpoint written in the background is committed
        state.wait()
    entries = state.entries
    record = {
        "config": dataclasses.asdict(config),
        "status": "ok",
        "reason": None,
        "complex_seed": complex_seed,
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
    else:
        best_epoch, val_accuracy = state.best()
        fit_model.load_weights(state.best_weights_path())
        test = fit_model.evaluate(
            splits.eval_data("test"), verbose=0, return_dict=True
        )
        record.update(
            val_accuracy=val_accuracy,
            test_accuracy=float(test["accuracy"]),
            best_epoch=best_epoch + 1,
        )
        if model is not fit_model:  # saved with its optimizer, as compiled
            model.compile(
                fit_model.optimizer, fit_model.loss, metrics=["accuracy"]
            )
        model.save(os.path.join(run_dir, "model.keras"))
        if config.export:
            model.export(os.path.join(run_dir, "saved_model"), verbose=False)
    # Epochs of earlier, interrupted invocations count; this invocation's
    # own epochs are inside its elapsed time already.
    elapsed = time.perf_counter() - start
    record["wall_time_s"] = elapsed + train_time - state.session_epoch_time
    _io.atomic_write_json(result_path, record)
    state.delete()  # only now: the result is committed
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


def _build(config, splits, build_model):
    """The model, and the model `fit` trains (the same, or behind the
    memory path's image pipeline), built under the run's precision and
    compiled with the paper's optimizer and schedule (Section 4.2)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        model = build_model(
            config.model,
            num_classes=splits.num_classes,
            input_shape=splits.input_shape,
            bn_gamma=config.gamma,
            input_bn=config.input_norm == "bn",
            activation_std=config.activation_std,
            norm_layer=norm_layer(config.bn),
        )
        fit_model = splits.fit_model(model)
    finally:
        keras.config.set_dtype_policy(previous)
    schedule = EpochCosineDecay(
        config.lr, splits.steps_per_epoch, config.epochs, eta_min=1e-8
    )
    sgd = TorchSGD if config.torch_parity else keras.optimizers.SGD
    optimizer = ParamGroupOptimizer(
        sgd(schedule, momentum=config.momentum),
        gamma_lr_divisor=config.gamma_lr_divisor,
        weight_decay=config.weight_decay,
    )
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    fit_model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False if config.deterministic else config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return model, fit_model


def _callbacks(config, splits, run_dir, callbacks):
    """Precise BN first (before validation), then the caller's, then the
    diagnostics."""
    callbacks = list(callbacks)
    if config.precise_bn:
        # Each epoch's own (augmented) training batches, up to N of them.
        callbacks.insert(
            0,
            PreciseBNCallback(
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


def _read_result(path):
    """A run's result.json; None (and a warning naming it) when torn."""
    try:
        record = _io.read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        warnings.warn(
            f"{path} is unreadable ({error}); the run is done again",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    if record is not None and not isinstance(record, dict):
        warnings.warn(
            f"{path} holds no result record; the run is done again",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return record
