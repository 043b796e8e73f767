"""SGD in PyTorch's momentum form, the reference's optimizer (Section 4.2)."""

import keras
from keras import ops

from keras_bninit.hyperparameters import constant as _constant


@keras.saving.register_keras_serializable(package="keras_bninit")
class TorchSGD(keras.optimizers.SGD):
    """SGD with PyTorch's momentum form: the learning rate outside the buffer.

    PyTorch (the paper's reference, Section 4.2) updates

        buf = momentum * buf + g;   w = w - lr * buf

    while Keras's SGD keeps the learning rate inside the buffer
    (`v = momentum * v - lr * g; w = w + v`). The two agree while the rate
    is constant and part when it changes: with a decaying schedule Keras
    still applies earlier, larger rates to the remembered gradients (about
    1.0003 times the total step over the paper's 180-epoch cosine, more for
    short runs). Use this class (e.g. inside `ParamGroupOptimizer`, which
    passes each group's rate as `learning_rate`) for exact parity with the
    reference. Dampening is 0, as in the reference; `nesterov=True` uses
    PyTorch's form `w = w - lr * (g + momentum * buf)`.

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: the momentum factor (>= 0), 0.9 in the paper.
        nesterov: PyTorch's Nesterov momentum.
        **kwargs: other `keras.optimizers.SGD` arguments.

    Example:

    ```python
    schedule = kb.EpochCosineDecay(0.1, steps_per_epoch=352, epochs=180)
    optimizer = kb.ParamGroupOptimizer(kb.TorchSGD(schedule, momentum=0.9))
    model.compile(optimizer, "sparse_categorical_crossentropy")
    ```
    """

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(gradient, learning_rate))
            return
        momentum = _constant(self.momentum, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = buffer
        if self.nesterov:
            step = ops.add(gradient, ops.multiply(buffer, momentum))
        self.assign_sub(variable, ops.multiply(step, learning_rate))
