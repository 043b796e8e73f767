"""The command line's argument checks, answered before Keras loads.

Loading Keras (and TensorFlow with it) takes seconds; a reversed seed
range or a negative c should not. These checks use only the Keras-free
modules `harness.config`, `harness.presets` and `harness._tf`: every
field's value, the model's and data set's names, and what the chosen
backend cannot do (`check_machine`, which `experiment.check_environment`
runs too). The checks that need Keras, the data or the output folder
still run later, before anything is written; these only answer the
common mistakes at once (`ValueError`, one line, exit status 2).
"""

import os

from keras_bninit.harness._tf import available as installed
from keras_bninit.harness.config import (
    DATASET_DEFAULTS,
    DATASET_NAMES,
    MODELS,
    validate,
)

# `pip install` of each backend, by Keras backend name.
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def install_hint(backend):
    return f'pip install "keras_bninit[{backend}]"'


def check_backend_installed(backend):
    """Raises `ValueError` naming the install when `backend` is missing."""
    if backend not in BACKEND_MODULES:
        raise ValueError(
            f"Unknown Keras backend {backend!r}; valid: "
            f"{', '.join(BACKEND_MODULES)}"
        )
    if installed(BACKEND_MODULES[backend]):
        return
    if not any(map(installed, BACKEND_MODULES.values())):
        others = ", ".join(f"[{b}]" for b in BACKEND_MODULES if b != backend)
        raise ValueError(
            f"no Keras backend is installed: {install_hint(backend)} (or "
            f"{others})"
        )
    raise ValueError(
        f"the {backend} backend is not installed: {install_hint(backend)}"
    )


def check_run(config, backend):
    """Raises `ValueError` for the first value of a resolved `RunConfig`
    that is bad or that `backend` cannot serve."""
    validate(config)
    if config.model not in MODELS:
        raise ValueError(
            f"unknown model {config.model!r}; valid: {', '.join(MODELS)}"
        )
    check_machine(config, backend)


def check_machine(config, backend):
    """Raises `ValueError` for what this machine and `backend` cannot
    serve: a data set that is neither a name nor a folder, tf.data without
    TensorFlow, steps per execution on torch, an output path that is a
    file. `experiment.check_environment` runs these too."""
    dataset = str(config.dataset)
    if dataset not in DATASET_DEFAULTS and not os.path.isdir(dataset):
        raise ValueError(
            f"Unknown data set {dataset!r}. Valid: "
            f"{', '.join(sorted(DATASET_NAMES))}, or the path of a "
            "directory of class subfolders."
        )
    if config.input == "tfdata" and not installed("tensorflow"):
        raise ValueError(
            "--input tfdata needs TensorFlow, which is not installed: "
            f"{install_hint('tensorflow')}, or use --input memory"
        )
    if config.steps_per_execution > 1 and backend == "torch":
        raise ValueError(
            "steps_per_execution > 1 is not supported by Keras on the torch "
            f"backend. Received: steps_per_execution="
            f"{config.steps_per_execution}; use 1 or --backend jax/tensorflow."
        )
    if os.path.exists(config.out) and not os.path.isdir(config.out):
        raise ValueError(
            f"The output path {config.out!r} is a file; give a directory."
        )


def check_runs(configs, backend):
    """`check_run` for each distinct configuration of a sweep."""
    seen = set()
    for config in configs:
        key = (config.key(), config.out)
        if key not in seen:
            seen.add(key)
            check_run(config, backend)
