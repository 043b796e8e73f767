"""The paper's learning-rate schedule (Section 4.2)."""

import math

import keras
from keras import ops

from keras_bninit._validation import choice, positive_float, positive_int
from keras_bninit.hyperparameters import HyperVariables
from keras_bninit.hyperparameters import constant as _constant


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
        self.per_group_floor = choice(
            "per_group_floor", per_group_floor, (True, False)
        )
        self._hyper = None
        self.set_values(initial_learning_rate, steps_per_epoch, epochs, eta_min)

    def set_values(
        self, initial_learning_rate, steps_per_epoch, epochs, eta_min=1e-8
    ):
        """Gives the schedule new numbers without a new compiled program.

        The numbers are variables that a compiled train step reads, so a
        sweep trains its next run (another learning rate or length) in the
        program it has. Arguments as in the constructor; `per_group_floor`
        stays.
        """
        lr0 = positive_float("initial_learning_rate", initial_learning_rate)
        steps_per_epoch = positive_int("steps_per_epoch", steps_per_epoch)
        epochs = positive_int("epochs", epochs)
        eta_min = positive_float("eta_min", eta_min, allow_zero=True)
        if self.per_group_floor and eta_min == lr0:
            raise ValueError(
                "per_group_floor=True needs eta_min != initial_learning_rate: "
                "the schedule is then constant and carries no cosine for the "
                "groups. Received: "
                f"initial_learning_rate={lr0!r}, eta_min={eta_min!r}"
            )
        self.initial_learning_rate = lr0
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.eta_min = eta_min
        values = {
            "steps_per_epoch": steps_per_epoch,
            "epochs": epochs,
            "eta_min": eta_min,
            "span": lr0 - eta_min,  # in double precision, rounded once
        }
        if self._hyper is None:
            self._hyper = HyperVariables("epoch_cosine_decay", values)
        else:
            self._hyper.assign(**values)

    @property
    def variables(self):
        """The variables holding the schedule's numbers (not saved: they
        follow from the config). `ParamGroupOptimizer` lists them among its
        own, so every backend's compiled step reads their current values."""
        return self._hyper.variables

    def __call__(self, step):
        dtype = keras.config.floatx()
        hyper = self._hyper
        epoch = ops.floor_divide(
            ops.cast(step, dtype), hyper.read("steps_per_epoch", dtype)
        )
        angle = _constant(math.pi, dtype) * epoch / hyper.read("epochs", dtype)
        cosine = _constant(0.5, dtype) * (
            _constant(1.0, dtype) + ops.cos(angle)
        )
        eta_min = hyper.read("eta_min", dtype)
        return eta_min + hyper.read("span", dtype) * cosine

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
        learning_rate = ops.convert_to_tensor(learning_rate)
        dtype = learning_rate.dtype
        offset, ratio = self.group_terms(factor)
        if not self.per_group_floor:
            return learning_rate * _constant(ratio, dtype)
        offset = _constant(offset, dtype)
        return offset + (learning_rate - offset) * _constant(ratio, dtype)

    def group_terms(self, factor):
        """`(offset, ratio)` in double precision, such that a group's rate
        is `offset + (lr_t - offset) * ratio`: `(0, f)` (f * lr_t), or with
        `per_group_floor` `(eta_min, (lr_0 f - eta_min) / (lr_0 - eta_min))`,
        the ratio being the cosine term (lr_t - eta_min) / (lr_0 - eta_min)
        rescaled. `ParamGroupOptimizer` holds them as variables, so a new
        learning rate or divisor needs no new compiled program; `lr_t - 0`
        and `x + 0` are exact, so both forms give `group_learning_rate`'s
        numbers bit for bit.
        """
        factor = positive_float("factor", factor)
        if not self.per_group_floor:
            return 0.0, factor
        lr0, eta_min = self.initial_learning_rate, self.eta_min
        return eta_min, (lr0 * factor - eta_min) / (lr0 - eta_min)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": self.epochs,
            "eta_min": self.eta_min,
            "per_group_floor": self.per_group_floor,
        }
