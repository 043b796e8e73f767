"""The experiment harness: data, one run, sweeps, store, statistics, reports.

Everything the paper's protocol needs around the method itself: the data
sets (`datasets`), two input paths (`data`: tf.data; `memory`: the images
on the accelerator, no TensorFlow), one training run (`experiment`),
multi-seed sweeps and their results store (`sweep`, `store`), paired
statistics and reports (`stats`, `report`), and diagnostics callbacks and
plots (`diagnostics`, `probes`, `diagnostic_plots`). TensorFlow is needed
only for the tf.data path and tensorflow-datasets; where it is imported
next to JAX or PyTorch, the GPUs are hidden from it (`_tf`). The method
itself (`keras_bninit`) never imports it.

Submodules are imported on first use, so `import keras_bninit.harness`
is cheap:

    from keras_bninit.harness import RunConfig, run_experiment
    from keras_bninit.harness.sweep import run_sweep
"""

import importlib

_SUBMODULES = (
    "checkpoints",
    "config",
    "data",
    "datasets",
    "diagnostic_plots",
    "diagnostics",
    "experiment",
    "memory",
    "presets",
    "probes",
    "ray_executor",
    "report",
    "report_plots",
    "stats",
    "store",
    "sweep",
    "tfds_source",
)
_NAMES = {
    "RunConfig": "config",
    "run_experiment": "experiment",
    "run_sweep": "sweep",
    "ResultStore": "store",
}

__all__ = sorted(_SUBMODULES + tuple(_NAMES))


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        module = importlib.import_module(f"{__name__}.{_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
