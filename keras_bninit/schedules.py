"""The paper's learning-rate schedule (Section 4.2)."""

import math

import keras
from keras import ops

from keras_bninit._validation import positive_float, positive_int


@keras.saving.register_keras_serializable(package="keras_bninit")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Half-period cosine decay stepped once per epoch.

    lr(epoch) = eta_min + (lr_0 - eta_min) * (1 + cos(pi * epoch / epochs)) / 2
    with epoch = floor(step / steps_per_epoch): PyTorch's
    `CosineAnnealingLR(T_max=epochs, eta_min=1e-8)` stepped after every
    epoch, as in the reference (Section 4.2).

    Args:
        initial_learning_rate: lr_0 (> 0).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        epochs: T_max, the number of epochs of the run (>= 1).
        eta_min: the floor, 1e-8 in the reference.
    """

    def __init__(
        self, initial_learning_rate, steps_per_epoch, epochs, eta_min=1e-8
    ):
        self.initial_learning_rate = positive_float(
            "initial_learning_rate", initial_learning_rate
        )
        self.steps_per_epoch = positive_int("steps_per_epoch", steps_per_epoch)
        self.epochs = positive_int("epochs", epochs)
        self.eta_min = positive_float("eta_min", eta_min, allow_zero=True)

    def __call__(self, step):
        epoch = ops.floor_divide(
            ops.cast(step, "float32"), float(self.steps_per_epoch)
        )
        cosine = 0.5 * (1.0 + ops.cos(math.pi * epoch / self.epochs))
        return (
            self.eta_min + (self.initial_learning_rate - self.eta_min) * cosine
        )

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "eta_min": self.eta_min,
        }
