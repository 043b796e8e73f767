"""One training run, end to end with model.fit (Section 4.2).

`run_experiment(RunConfig(...))` loads the data, builds the model through
the model zoo, trains it with `ParamGroupOptimizer(SGD(momentum=0.9))` and a
per-epoch cosine schedule, keeps the weights of the epoch with the best
validation accuracy, evaluates them on the test split and writes one result
record. Everything that can be wrong with the arguments or the data is
checked before anything is written. An interrupted run resumes from its
last completed epoch when it is started again with the same configuration.
"""

import dataclasses
import glob
import math
import os
import platform
import shutil
import time

import keras
import numpy as np

from keras_bninit._validation import (
    non_negative_int,
    positive_float,
    positive_int,
)
from keras_bninit.harness import _io
from keras_bninit.harness.data import (
    DATASETS,
    EpochTracker,
    available_datasets,
    load_dataset,
)
from keras_bninit.harness.stats import BASELINE_OVERRIDES
from keras_bninit.harness.store import config_key
from keras_bninit.norms import NORM_LAYERS, norm_layer
from keras_bninit.optimizers import ParamGroupOptimizer
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
}


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
        data_dir: tensorflow-datasets' data directory.
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
            positive_float(name, getattr(config, name))
    positive_float("weight_decay", config.weight_decay, allow_zero=True)
    positive_float("momentum", config.momentum, allow_zero=True)
    for name in ("epochs", "batch_size"):
        if getattr(config, name) is not None:
            positive_int(name, getattr(config, name))
    non_negative_int("seed", config.seed)
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
    import tensorflow as tf

    from keras_bninit import __version__

    return {
        "keras_bninit": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


class _RunState(keras.callbacks.BackupAndRestore):
    """Backup, per-epoch log and best-epoch weights, committed together.

    Each epoch's log entry and (if it is the best so far) its weights are
    written before the backup; the backup's metadata is the commit point.
    On resume, log entries and best-weight files of epochs that the backup
    does not cover are dropped, so the log, the best epoch and the backup
    always agree, wherever the process was killed.
    """

    def __init__(self, run_dir):
        super().__init__(
            os.path.join(run_dir, "backup"), double_checkpoint=True
        )
        self.run_dir = run_dir
        self.log_path = os.path.join(run_dir, "epochs.json")
        self.entries = []  # the committed epochs, as in `log_path`
        self.failure = None
        self.session_epoch_time = 0.0
        self._epoch_start = None

    def _best_path(self, epoch):
        return os.path.join(self.run_dir, f"best-e{epoch:04d}.weights.h5")

    def _prune_best(self):
        """Removes best-weight files other than the committed best's."""
        keep = self.best_weights_path()
        pattern = os.path.join(glob.escape(self.run_dir), "best-e*.weights.h5")
        for path in glob.glob(pattern):
            if path != keep:
                os.remove(path)

    def best(self):
        """(epoch, val_accuracy) of the best committed epoch, or None."""
        if not self.entries:
            return None
        best = max(self.entries, key=lambda e: (e["val_accuracy"], -e["epoch"]))
        return best["epoch"], best["val_accuracy"]

    def best_weights_path(self):
        best = self.best()
        return None if best is None else self._best_path(best[0])

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        done = self.model._initial_epoch or 0
        self.entries = [
            e for e in _io.read_json(self.log_path, []) if e["epoch"] < done
        ]
        _io.atomic_write_json(self.log_path, self.entries)
        self._prune_best()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if not all(math.isfinite(float(v)) for v in logs.values()):
            bad = sorted(k for k, v in logs.items() if not math.isfinite(v))
            self.failure = f"non-finite {', '.join(bad)} at epoch {epoch + 1}"
            self.model.stop_training = True
            return  # nothing of a diverged epoch is committed
        entry = {k: float(v) for k, v in logs.items()}
        entry["epoch"] = epoch
        entry["lr"] = float(
            keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        )
        entry["epoch_time_s"] = time.perf_counter() - self._epoch_start
        self.session_epoch_time += entry["epoch_time_s"]
        best = self.best()
        if best is None or entry["val_accuracy"] > best[1]:
            self.model.save_weights(self._best_path(epoch), overwrite=True)
        self.entries.append(entry)
        _io.atomic_write_json(self.log_path, self.entries)
        super().on_epoch_end(epoch, logs)  # the commit point
        self._prune_best()

    def on_train_end(self, logs=None):
        if self.failure is None and not self.model.stop_training:
            super().on_train_end(logs)  # deletes the backup


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
    done = _io.read_json(result_path)
    if done is not None:
        return done

    # -- data and model: every failure here happens before any write -------
    splits = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        input_norm=config.input_norm,
    )
    complex_seed = set_seed(config.seed, deterministic=config.deterministic)
    model = build_model(
        config.model,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        bn_gamma=config.gamma,
        input_bn=config.input_norm == "bn",
        activation_std=config.activation_std,
        norm_layer=norm_layer(config.bn),
    )
    schedule = EpochCosineDecay(
        config.lr, splits.steps_per_epoch, config.epochs, eta_min=1e-8
    )
    optimizer = ParamGroupOptimizer(
        keras.optimizers.SGD(schedule, momentum=config.momentum),
        gamma_lr_divisor=config.gamma_lr_divisor,
        weight_decay=config.weight_decay,
    )
    model.compile(
        optimizer,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False if config.deterministic else config.jit_compile,
    )

    # -- train -------------------------------------------------------------
    os.makedirs(run_dir, exist_ok=True)
    _io.atomic_write_json(
        os.path.join(run_dir, "config.json"), dataclasses.asdict(config)
    )
    tracker = EpochTracker()
    state = _RunState(run_dir)
    if config.diagnostics:
        from keras_bninit.harness.diagnostics import diagnostic_callbacks

        callbacks = [
            *callbacks,
            *diagnostic_callbacks(
                os.path.join(run_dir, "diagnostics"),
                probe=splits.val_dataset(),
            ),
        ]
    model.fit(
        splits.fit_train_dataset(config.seed, tracker),
        validation_data=splits.val_dataset(),
        epochs=config.epochs,
        shuffle=False,
        verbose=config.verbose,
        callbacks=[
            tracker,
            keras.callbacks.TerminateOnNaN(),
            *callbacks,
            state,
        ],
    )
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
        model.load_weights(state.best_weights_path())
        test = model.evaluate(
            splits.test_dataset(), verbose=0, return_dict=True
        )
        record.update(
            val_accuracy=val_accuracy,
            test_accuracy=float(test["accuracy"]),
            best_epoch=best_epoch + 1,
        )
        model.save(os.path.join(run_dir, "model.keras"))
        if config.export:
            model.export(os.path.join(run_dir, "saved_model"), verbose=False)
        os.remove(state.best_weights_path())
    # Epochs of earlier, interrupted invocations count; this invocation's
    # own epochs are inside its elapsed time already.
    elapsed = time.perf_counter() - start
    record["wall_time_s"] = elapsed + train_time - state.session_epoch_time
    _io.atomic_write_json(result_path, record)
    if record["status"] == "failed":
        shutil.rmtree(os.path.join(run_dir, "backup"), ignore_errors=True)
    return record
