"""keras_bninit: "Revisiting Batch Norm Initialization" for Keras 3.

Davis & Frank (ECCV 2022) propose three changes to batch normalization:
initialize every BN scale to a constant c < 1 (`batch_norm(gamma=c)`), train
the scales with the learning rate divided by a = 100
(`ParamGroupOptimizer`), and normalize the input with a BN layer
(`InputBatchNorm`). `retrofit` applies them to an existing Keras model.
"""

from keras_bninit.activations import activation_std, available_activations
from keras_bninit.experiment import RunConfig, run_experiment
from keras_bninit.layers import (
    PAPER_EPSILON,
    PAPER_MOMENTUM,
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
    default_group,
    tag_variable,
)
from keras_bninit.retrofit import batch_norm_layers, retrofit
from keras_bninit.schedules import EpochCosineDecay
from keras_bninit.seeding import make_complex, set_seed

__version__ = "0.1.0"
