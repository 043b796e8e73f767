"""keras_bninit: "Revisiting Batch Norm Initialization" for Keras 3.

Davis & Frank (ECCV 2022) propose three changes to batch normalization:
initialize every BN scale to a constant c < 1 (`batch_norm(gamma=c)`), train
the scales with the learning rate divided by a = 100
(`ParamGroupOptimizer`), and normalize the input with a BN layer
(`InputBatchNorm`). `retrofit` applies them to an existing Keras model.
`set_seed` seeds a run; `keras_bninit.initializers` draws initial weights
from that seed with NumPy, the same on every backend.

This package is the method alone: it imports Keras, NumPy and SciPy and runs
on every Keras backend (TensorFlow, JAX, PyTorch). The experiment harness
(data, runs, sweeps, reports) is `keras_bninit.harness`; its names stay
reachable from here (`keras_bninit.RunConfig`, `keras_bninit.run_experiment`,
`keras_bninit.harness.sweep`, ...) and load on first use.
"""

import importlib

from keras_bninit import _checkout, initializers
from keras_bninit.activations import activation_std, available_activations
from keras_bninit.layers import (
    PAPER_EPSILON,
    PAPER_MOMENTUM,
    BatchNormalization,
    InputBatchNorm,
    batch_norm,
)
from keras_bninit.norms import (
    NORM_LAYERS,
    A1BatchNorm,
    A2BatchNorm,
    InstanceEnhancementBatchNorm,
    RepresentativeBatchNorm,
    norm_layer,
)
from keras_bninit.optimizers import (
    DECAY,
    NO_DECAY,
    SCALE,
    ParamGroupOptimizer,
    TorchSGD,
    default_group,
    tag_variable,
)
from keras_bninit.precise_bn import (
    PreciseBN,
    PreciseBNCallback,
    update_bn_stats,
)
from keras_bninit.retrofit import batch_norm_layers, retrofit
from keras_bninit.saving import load_model
from keras_bninit.schedules import EpochCosineDecay
from keras_bninit.seeding import make_complex, set_seed

__version__ = "0.3.0"

_checkout.install()  # `keras_bninit.models` from a source checkout

# Harness names kept reachable from the top level for existing code; they
# import TensorFlow (tf.data), so they load only when asked for.
_HARNESS_NAMES = ("RunConfig", "run_experiment")
_HARNESS_MODULES = (
    "data",
    "diagnostics",
    "experiment",
    "report",
    "stats",
    "store",
    "sweep",
)


def __getattr__(name):
    if name == "harness":
        return importlib.import_module("keras_bninit.harness")
    if name in _HARNESS_NAMES:
        return getattr(importlib.import_module("keras_bninit.harness"), name)
    if name in _HARNESS_MODULES:
        return importlib.import_module(f"keras_bninit.harness.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
