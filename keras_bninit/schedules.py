"""The paper's learning-rate schedule (Section 4.2)."""

import math

import keras
from keras import ops

from keras_bninit._validation import choice, positive_float, positive_int


def _constant(value, dtype):
    """A Python number as a tensor of `dtype`, rounded once (a cast would
    go through float32 first on some backends)."""
    return ops.convert_to_tensor(value, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_bninit")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Half-period cosine decay stepped once per epoch.

    lr(epoch) = eta_min + (lr_0 - eta_min) * (1 + cos(pi * epoch / epochs)) / 2
    with epoch = floor(step / steps_per_epoch): PyTorch's
    `CosineAnnealingLR(T_max=epochs, eta_min=1e-8)` stepped after every
    epoch, as in the reference (Section 4.2). It is computed in
    `keras.config.floatx()`.

    A parameter group whose rate is lr_0 * f (the BN scales of Section 3.2:
    f = 1 / a) gets `group_learning_rate(lr(epoch), f)`. By default that is
    f * lr(epoch), the whole schedule divided (floor f * eta_min). PyTorch's
    `CosineAnnealingLR` gives every group the same floor instead:
    eta_min + (lr_0 * f - eta_min) * (1 + cos(pi * epoch / epochs)) / 2,
    which `per_group_floor=True` reproduces.

    Args:
        initial_learning_rate: lr_0 (> 0).
        steps_per_epoch: optimizer steps per epoch (>= 1).
        epochs: T_max, the number of epochs of the run (>= 1).
        eta_min: the floor, 1e-8 in the reference.
        per_group_floor: whether every parameter group anneals to eta_min
            (PyTorch's, the reference's) rather than to its share of it.
            Needs `eta_min != initial_learning_rate` (a constant schedule
            carries no cosine to give the groups).

    Example:

    ```python
    schedule = kb.EpochCosineDecay(0.1, steps_per_epoch=352, epochs=180)
    float(schedule(352 * 90))  # 0.05: half-way, after 90 epochs
    optimizer = kb.ParamGroupOptimizer(kb.TorchSGD(schedule, momentum=0.9))
    ```
    """

    def __init__(
        self,
        initial_learning_rate,
        steps_per_epoch,
        epochs,
        eta_min=1e-8,
        per_group_floor=False,
    ):
        self.initial_learning_rate = positive_float(
            "initial_learning_rate", initial_learning_rate
        )
        self.steps_per_epoch = positive_int("steps_per_epoch", steps_per_epoch)
        self.epochs = positive_int("epochs", epochs)
        self.eta_min = positive_float("eta_min", eta_min, allow_zero=True)
        choice("per_group_floor", per_group_floor, (True, False))
        if per_group_floor and self.eta_min == self.initial_learning_rate:
            raise ValueError(
                "per_group_floor=True needs eta_min != initial_learning_rate: "
                "the schedule is then constant and carries no cosine for the "
                "groups. Received: "
                f"initial_learning_rate={self.initial_learning_rate!r}, "
                f"eta_min={self.eta_min!r}"
            )
        self.per_group_floor = per_group_floor

    def __call__(self, step):
        dtype = keras.config.floatx()
        epoch = ops.floor_divide(
            ops.cast(step, dtype), _constant(self.steps_per_epoch, dtype)
        )
        angle = (
            _constant(math.pi, dtype) * epoch / _constant(self.epochs, dtype)
        )
        cosine = _constant(0.5, dtype) * (
            _constant(1.0, dtype) + ops.cos(angle)
        )
        eta_min = _constant(self.eta_min, dtype)
        span = _constant(self.initial_learning_rate - self.eta_min, dtype)
        return eta_min + span * cosine

    def group_learning_rate(self, learning_rate, factor):
        """The rate of a parameter group whose rate is lr_0 * `factor`.

        Args:
            learning_rate: this schedule's rate lr_t at the step (a tensor
                or float).
            factor: the group's factor f (> 0), e.g. 1 / a for the BN
                scales (Section 3.2).

        Returns:
            f * lr_t, or with `per_group_floor` PyTorch's per-group cosine
            eta_min + (lr_t - eta_min) * (lr_0 * f - eta_min) /
            (lr_0 - eta_min), in `learning_rate`'s dtype.
        """
        factor = positive_float("factor", factor)
        learning_rate = ops.convert_to_tensor(learning_rate)
        dtype = learning_rate.dtype
        if not self.per_group_floor:
            return learning_rate * _constant(factor, dtype)
        # (lr_t - eta_min) / (lr_0 - eta_min) is the cosine term of step t.
        lr0, eta_min = self.initial_learning_rate, self.eta_min
        ratio = _constant((lr0 * factor - eta_min) / (lr0 - eta_min), dtype)
        eta_min = _constant(eta_min, dtype)
        return eta_min + (learning_rate - eta_min) * ratio

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "eta_min": self.eta_min,
            "per_group_floor": self.per_group_floor,
        }
