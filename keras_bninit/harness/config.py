"""A run's configuration: `RunConfig`, what each field means, and the run
constants (`harness.constants`, given here too; Sections 3.2, 4.1-4.5).

Every field of `RunConfig` declares its metadata once: the help text, the
valid choices, whether it takes part in a sweep's grid, and whether it is
part of the result's identity (`config_key`) or only says where a run
writes and how much it prints. `train.py`'s options, the store's key and
the validation are derived from it.

This module imports neither TensorFlow nor Keras (only the standard
library, `keras_bninit._validation` and `harness.constants`), so
`train.py` reads it, for `--help` and its choices, before the Keras
backend is chosen. `key()` and `run_name()` are pure functions of the
configuration; checks against the file system and the backend happen
once, when a run or sweep starts (`harness.experiment.check_environment`).
"""

import dataclasses
import hashlib
import json
import math
import numbers
import os
import sys

from keras_bninit._validation import (
    choice,
    finite_float32,
    non_negative_int,
    positive_float,
    positive_int,
)
from keras_bninit.harness.constants import (  # noqa: F401  (public here too)
    ABLATIONS,
    BASELINE_OVERRIDES,
    BN_KINDS,
    DATASET_DEFAULTS,
    DATASET_NAMES,
    DEFAULT_INPUT,
    DIRECTORY,
    ETA_MIN,
    INPUT_NORMS,
    INPUTS,
    KERAS_SEMANTICS,
    MODELS,
    PRECISE_BN_BATCHES,
    PRECISIONS,
    PROPOSAL_DEFAULTS,
    RELATED,
    RELATED_DEFAULTS,
    SEED_LIMIT,
    SYNTHETIC_SIZE,
    TEST_FRACTION,
    TORCH_SEMANTICS,
    VALIDATION_FRACTION,
)

# -- field metadata ----------------------------------------------------------

_UNSET = object()


def _field(
    default,
    help,
    *,
    result=True,
    choices=None,
    grid=False,
    later=_UNSET,
    cli=None,
):
    """A `RunConfig` field with its metadata.

    Args:
        default: the field's default.
        help: what the field means (the docstring and `--help` text).
        result: whether the field is part of the result's identity (the
            store key); False for where a run writes and how it prints.
        choices: the valid values, or None.
        grid: whether a sweep may vary it (`train.py sweep --gamma 0.1 1`).
        later: for fields added after results were first stored: the value
            that means "as before", left out of the key at that value so
            stored runs keep their keys.
        cli: None for the plain option `--field-name VALUE`; False for no
            generic option (the command declares its own); or a dict of
            argparse settings (`flags`, `action`, `const`, `nargs`, ...).
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "result": result,
            "choices": choices,
            "grid": grid,
            "later": later,
            "cli": cli,
        },
    )


def _form_field(name, help, metavar="KIND"):
    """A field choosing between the reference's form (the default,
    `TORCH_SEMANTICS`) and Keras's (0.2's, `KERAS_SEMANTICS`)."""
    return _field(
        TORCH_SEMANTICS[name],
        help,
        choices=(TORCH_SEMANTICS[name], KERAS_SEMANTICS[name]),
        later=KERAS_SEMANTICS[name],
        cli={"metavar": metavar},
    )


@dataclasses.dataclass
class RunConfig:
    """Everything that defines one run; stored beside its result.

    None takes the default stated in the field's description (often the
    data set's, `DATASET_DEFAULTS`); `resolved()` fills them in. The
    defaults follow the authors' recipe (PyTorch's forms,
    `TORCH_SEMANTICS`); `keras_semantics()` gives Keras's.
    """

    dataset: str = _field(
        "digits",
        f"{', '.join(DATASET_NAMES)}, or a directory of class subfolders",
        grid=True,
        cli={"metavar": "NAME|DIR"},
    )
    model: str | None = _field(
        None,
        f"a model-zoo name: {', '.join(MODELS)} (default: the data set's: "
        "resnet8 digits, resnet18 "
        "cifar10, resnet34 cifar100, resnet50 birds/cars)",
        grid=True,
        cli={"metavar": "NAME"},
    )
    lr: float | None = _field(
        None,
        "base learning rate alpha, cosine-decayed per epoch (default: 0.1)",
        grid=True,
    )
    gamma: float | None = _field(
        None,
        "c, the initial value of every BN scale (default: 0.1; 1 for rbn/iebn)",
        grid=True,
    )
    gamma_lr_divisor: float | None = _field(
        None,
        "a, the BN scales' learning-rate divisor (default: 100; 1 for "
        "rbn/iebn)",
        grid=True,
        cli={"metavar": "A"},
    )
    weight_decay: float = _field(
        1e-4, "coupled L2 on conv/dense kernels (PyTorch's weight_decay)"
    )
    momentum: float = _field(0.9, "SGD momentum")
    epochs: int | None = _field(
        None, "epochs (default: the data set's: 15 digits, 180 otherwise)"
    )
    batch_size: int | None = _field(
        None,
        "batch size (default: the data set's: 64 digits, birds and cars; "
        "128 otherwise)",
    )
    seed: int = _field(
        1,
        "the run seed n; every generator is seeded with make_complex(n) "
        "(Section 4.3)",
        result=False,  # the second half of the store's key
        cli=False,
    )
    bn: str = _field(
        "standard",
        "BN formulation (Sections 4.4, 4.5)",
        grid=True,
        choices=BN_KINDS,
        cli={"metavar": "KIND"},
    )
    input_norm: str = _field(
        "bn",
        "input normalization: bn (InputBatchNorm, Section 3.4), fixed "
        "((x-128)/128), offline (mean/std), none",
        grid=True,
        choices=INPUT_NORMS,
        cli={"metavar": "KIND"},
    )
    activation_std: float = _field(
        0.58, "sigma_act: InputBatchNorm's scale starts at c times it"
    )
    deterministic: bool = _field(
        False, "op determinism (no XLA): same seed, same numbers"
    )
    jit_compile: str | bool = _field(
        "auto",
        "no XLA",
        cli={"flags": ("--no-jit",), "action": "store_const", "const": False},
    )
    out: str = _field(
        "runs",
        "the directory that receives the run's own",
        result=False,
        cli=False,
    )
    export: bool = _field(
        False, "also export a SavedModel (TensorFlow)", result=False, cli=False
    )
    diagnostics: bool = _field(
        False, "record BN diagnostics", result=False, cli=False
    )
    verbose: int = _field(
        1,
        "Keras's verbosity: 0 nothing, 1 a progress bar, 2 one line per "
        "epoch (default: 1 on a terminal, 2 when the output is redirected)",
        result=False,
        choices=(0, 1, 2),
        cli={"metavar": "N"},
    )
    data_dir: str | None = _field(
        None,
        "tensorflow-datasets data directory, which may also hold a prepared "
        ".npz or CIFAR's python pickles (default: tfds's own)",
        result=False,
        cli={"metavar": "DIR"},
    )
    precise_bn: int = _field(
        0,
        "recompute BN statistics before each validation as population "
        f"statistics over N training batches (N default: {PRECISE_BN_BATCHES}, "
        "or the epoch's batches if fewer); off: the paper's moving averages",
        later=0,
        cli={"nargs": "?", "const": PRECISE_BN_BATCHES, "metavar": "N"},
    )
    sgd: str = _form_field(
        "sgd",
        "SGD's momentum form: torch (lr outside the buffer, the reference's: "
        "keras_bninit.TorchSGD) or keras (keras.optimizers.SGD)",
        metavar="FORM",
    )
    moving_variance: str = _form_field(
        "moving_variance",
        "what BN's moving variance averages: unbiased (PyTorch's) or biased "
        "(Keras's) batch variances",
    )
    scale_lr_floor: str = _form_field(
        "scale_lr_floor",
        "the BN scales' schedule: per_group (eta_min + (lr0/a - eta_min) "
        "cos, PyTorch's per-group eta_min) or divided (the whole schedule "
        "divided by a)",
    )
    input: str | None = _field(
        None,
        "input path: tfdata (tf.data, needs TensorFlow) or memory (the "
        "images on the accelerator, no TensorFlow) (default: tfdata on "
        "tensorflow, memory on jax and torch: the faster)",
        choices=INPUTS,
        later="tfdata",
        cli={"metavar": "PATH"},
    )
    precision: str = _field(
        "float32",
        "Keras dtype policy: float32 (the paper's), mixed_bfloat16, "
        "mixed_float16 (with loss scaling)",
        choices=PRECISIONS,
        later="float32",
        cli={"metavar": "POLICY"},
    )
    steps_per_execution: int = _field(
        1,
        "optimizer steps per dispatch (Keras's steps_per_execution; not on "
        "torch); same epochs, same numbers",
        result=False,
        cli={"metavar": "N"},
    )
    synthetic_size: int | None = _field(
        None,
        "with --dataset synthetic: training images before the 10 %% "
        "validation split (default: 50000, CIFAR-10's)",
        later=None,
        cli={"metavar": "N"},
    )

    @classmethod
    def baseline(cls, **kwargs):
        """BASE: c = 1, a = 1, standard BN, the input BN kept (Section 3.2)."""
        return cls(**{**kwargs, **BASELINE_OVERRIDES})

    @classmethod
    def keras_semantics(cls, **kwargs):
        """A configuration with Keras's forms (`KERAS_SEMANTICS`)."""
        return cls(**{**KERAS_SEMANTICS, **kwargs})

    @classmethod
    def from_dict(cls, values):
        """A config from a dict, rejecting unknown keys by name.

        A 0.2 record's `torch_parity` (True: PyTorch's SGD form) becomes
        `sgd`; its other forms were Keras's, as records without the newer
        fields say.
        """
        values = upgrade(values)
        names = field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(
                f"Unknown run configuration fields {unknown}; valid fields: "
                f"{sorted(names)}"
            )
        return cls(**values)

    def resolved(self, backend=None):
        """A copy with every None default filled in (no checks, no I/O).

        Args:
            backend: the Keras backend, for the input path's default;
                None reads the loaded Keras (else KERAS_BACKEND).
        """
        name = self.dataset if self.dataset in DATASET_DEFAULTS else DIRECTORY
        defaults = DATASET_DEFAULTS[name]
        method = RELATED_DEFAULTS if self.bn in RELATED else PROPOSAL_DEFAULTS

        def number(value, default):
            return float(default if value is None else value)

        return dataclasses.replace(
            self,
            gamma=number(self.gamma, method["gamma"]),
            gamma_lr_divisor=number(
                self.gamma_lr_divisor, method["gamma_lr_divisor"]
            ),
            model=defaults["model"] if self.model is None else self.model,
            lr=number(self.lr, defaults["lr"]),
            epochs=defaults["epochs"] if self.epochs is None else self.epochs,
            batch_size=(
                defaults["batch"]
                if self.batch_size is None
                else self.batch_size
            ),
            input=(
                DEFAULT_INPUT.get(backend or keras_backend())
                if self.input is None
                else self.input
            ),
        )

    def key(self, backend=None):
        """The store key of the resolved configuration (`config_key`)."""
        return config_key(dataclasses.asdict(self.resolved(backend)))

    def run_name(self, backend=None):
        """A readable, unique directory name for this run."""
        c = self.resolved(backend)
        dataset = os.path.basename(os.path.normpath(str(c.dataset)))
        if len(dataset) > _NAME_PART:  # the folder name must stay valid
            digest = hashlib.md5(dataset.encode()).hexdigest()[:8]
            dataset = f"{dataset[: _NAME_PART - 9]}-{digest}"
        return (
            f"{dataset}-{c.model}-{c.bn}-lr{c.lr:g}-c{c.gamma:g}"
            f"-a{c.gamma_lr_divisor:g}-s{c.seed}-{c.key(backend)[:8]}"
        )


# The most characters of a directory data set's name in a run's folder
# name (file systems allow 255 bytes per name).
_NAME_PART = 48


def _describe_fields():
    lines = ["", "    Attributes:"]
    for f in dataclasses.fields(RunConfig):
        text = f.metadata["help"].replace("%%", "%")
        if not f.metadata["result"]:
            text += " (not part of the result's identity)"
        lines.append(f"        {f.name}: {text}.")
    return "\n".join(lines) + "\n"


RunConfig.__doc__ += _describe_fields()


def field_names():
    """The names of `RunConfig`'s fields, in order."""
    return tuple(f.name for f in dataclasses.fields(RunConfig))


def fields(**metadata):
    """`RunConfig`'s fields whose metadata has the given values."""
    return tuple(
        f
        for f in dataclasses.fields(RunConfig)
        if all(f.metadata[k] == v for k, v in metadata.items())
    )


GRID_FIELDS = tuple(f.name for f in fields(grid=True))
# Fields that never change a run's result (and the seed, the second half
# of the key).
NON_RESULT_FIELDS = frozenset(f.name for f in fields(result=False))
# Fields added after results were first stored -> the value meaning "as
# before" (0.2 stores keep their keys).
LATER_FIELDS = {
    f.name: f.metadata["later"]
    for f in dataclasses.fields(RunConfig)
    if f.metadata["later"] is not _UNSET
}


def format_value(value):
    """A configuration value as reports and plots print it (`0.1`, `100`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    return f"{float(value):g}"


def keras_backend():
    """The Keras backend: the loaded Keras's, else KERAS_BACKEND's."""
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend"):
        return keras.backend.backend()
    return os.environ.get("KERAS_BACKEND") or "tensorflow"


def upgrade(values):
    """A configuration dict in today's spelling (0.2's `torch_parity`)."""
    values = dict(values)
    if "torch_parity" in values:
        parity = values.pop("torch_parity")
        values.setdefault("sgd", "torch" if parity is True else "keras")
        if not isinstance(parity, bool):  # kept so that validate names it
            values["sgd"] = parity
    return values


# -- the store's key -----------------------------------------------------------


def _canonical(value):
    """A config value as JSON with one spelling: numbers become floats (so
    `1`, `1.0` and `numpy.float32(1)` agree), tuples lists, mappings get
    sorted keys."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return repr(value)  # JSON has no NaN/inf; keep them distinct
        return value
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _canonical(value.tolist())
    raise TypeError(
        f"Config values must be numbers, strings, booleans, None, lists or "
        f"dicts. Received: {value!r} of type {type(value).__name__}"
    )


# Defaults filled in before hashing, so a configuration that spells a
# default out and one that leaves it implicit get the same key.
KEY_DEFAULTS = {"bn": "standard", "input_norm": "bn"}


def canonical_config(config):
    """The configuration that `config_key` hashes, as a sorted dict.

    Fields that are not part of the result (`NON_RESULT_FIELDS`, the seed)
    are dropped, as are `LATER_FIELDS` at their "as before" value; every
    number becomes a float. (`config_key` hashes the optimizer form as 0.2
    spelled it, `torch_parity`, so 0.2's keys stay valid.)

    Args:
        config: mapping of configuration fields (a record's "config").

    Returns:
        A new dict with sorted keys.
    """
    if not isinstance(config, dict):
        raise TypeError(
            f"`config` must be a dict. Received: {type(config).__name__}"
        )
    full = {**KEY_DEFAULTS, **upgrade(config)}
    kept = {
        k: v
        for k, v in full.items()
        if k not in NON_RESULT_FIELDS
        and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
    }
    return _canonical(kept)


def config_key(config):
    """A stable key for a configuration, the same for all its seeds.

    The first 16 hex digits of the SHA-256 of the canonical JSON of
    `canonical_config(config)`: independent of the fields' order, of `1`
    versus `1.0`, of the seed and of the fields that are not part of the
    result; every other field changes it.
    """
    canonical = canonical_config(config)
    if canonical.get("sgd") == "torch":  # hashed as 0.2 spelled it
        del canonical["sgd"]
        canonical["torch_parity"] = True
    text = json.dumps(canonical, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- checks without I/O -------------------------------------------------------


def validate(config):
    """Raises one `ValueError` for the first bad field, naming valid values.

    Only the values are checked; whether the data set, the output folder
    and the backend can serve them is `harness.experiment`'s
    `check_environment`.
    """
    if not isinstance(config, RunConfig):
        raise ValueError(f"Expected a RunConfig. Received: {config!r}")
    if not isinstance(config.dataset, str) or not config.dataset:
        raise ValueError(
            f"`dataset` must be a data set name ({', '.join(DATASET_NAMES)}) "
            f"or a directory. Received: dataset={config.dataset!r}"
        )
    for f in dataclasses.fields(RunConfig):
        value = getattr(config, f.name)
        if f.metadata["choices"] is not None and value is not None:
            choice(f.name, value, f.metadata["choices"])
    for name in ("gamma", "gamma_lr_divisor", "lr"):
        if getattr(config, name) is not None:
            finite_float32(name, positive_float(name, getattr(config, name)))
    for name in ("weight_decay", "momentum"):
        value = positive_float(name, getattr(config, name), allow_zero=True)
        finite_float32(name, value)
    if not isinstance(config.activation_std, str):
        finite_float32(
            "activation_std",
            positive_float("activation_std", config.activation_std),
        )
    for name in ("epochs", "batch_size", "synthetic_size"):
        if getattr(config, name) is not None:
            positive_int(name, getattr(config, name))
    positive_int("steps_per_execution", config.steps_per_execution)
    non_negative_int("seed", config.seed)
    if config.seed >= SEED_LIMIT:
        raise ValueError(
            f"`seed` must be < 2**31 ({SEED_LIMIT}). Received: "
            f"seed={config.seed}"
        )
    non_negative_int("precise_bn", config.precise_bn)
    for name in ("deterministic", "export", "diagnostics"):
        choice(name, getattr(config, name), (True, False))
    choice("jit_compile", config.jit_compile, ("auto", True, False))
    _bounds().check_fields(config)


def _bounds():
    """`harness.bounds`: imported, or (the command line, before Keras
    loads) the copy `cli._config` loaded beside this module."""
    import importlib

    return importlib.import_module("keras_bninit.harness.bounds")


def apply_ablation(config, ablation):
    """The paper's ablations (Section 3.2): init only or LR only.

    Args:
        config: a `RunConfig`.
        ablation: "init-only" (c < 1 kept, a = 1) or "lr-only" (c = 1,
            a kept).
    """
    choice("ablation", ablation, ABLATIONS)
    if ablation == "init-only":
        return dataclasses.replace(config, gamma_lr_divisor=1.0)
    return dataclasses.replace(
        config,
        gamma=1.0,
        gamma_lr_divisor=config.gamma_lr_divisor
        or PROPOSAL_DEFAULTS["gamma_lr_divisor"],
    )
