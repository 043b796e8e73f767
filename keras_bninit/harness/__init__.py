"""The experiment harness: data, one run, sweeps, store, statistics, reports.

Everything the paper's protocol needs around the method itself: tf.data
input pipelines (`data`), one training run (`experiment`), multi-seed
sweeps and their results store (`sweep`, `store`), paired statistics and
reports (`stats`, `report`), and diagnostics callbacks and plots
(`diagnostics`, `probes`, `diagnostic_plots`). The harness uses
TensorFlow for input (tf.data, tensorflow-datasets) whatever Keras backend
trains the model; the method itself (`keras_bninit`) does not.

Submodules are imported on first use, so `import keras_bninit.harness`
is cheap:

    from keras_bninit.harness import RunConfig, run_experiment
    from keras_bninit.harness.sweep import run_sweep
"""

import importlib

_SUBMODULES = (
    "checkpoints",
    "data",
    "diagnostic_plots",
    "diagnostics",
    "experiment",
    "probes",
    "ray_executor",
    "report",
    "report_plots",
    "stats",
    "store",
    "sweep",
)
_NAMES = {
    "RunConfig": "experiment",
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
