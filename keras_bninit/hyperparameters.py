"""Hyperparameters held as variables, so one compiled program serves many.

A compiled train step bakes every Python number it reads into the program:
a learning rate, the divisor a or a weight decay held as a float would force
a new trace and compile whenever it changes. `EpochCosineDecay` and
`ParamGroupOptimizer` keep theirs (the Python values, for `get_config`) and
also a `HyperVariables`: scalar, non-trainable variables that the compiled
step reads. Assigning new values there changes what the same program
computes, as Keras's own optimizers do with a float learning rate.

Each value is rounded once, from the Python float, into the variable's dtype,
which is exactly the constant the step would otherwise hold: a program that
reads the variables computes what one holding the constants computes.

The variables are not saved (they follow from the config) and are listed by
`ParamGroupOptimizer.variables`, so backends that pass state into compiled
functions explicitly (JAX) see new values too.
"""

import keras
from keras import ops


def constant(value, dtype):
    """A Python number as a tensor of `dtype`, rounded once (`ops.cast`
    goes through float32 first on TensorFlow, which float64 runs notice)."""
    return ops.convert_to_tensor(value, dtype=dtype)


class HyperVariables:
    """Named scalar variables of one object's hyperparameters.

    Args:
        owner: a name for the variables' paths (e.g. "epoch_cosine_decay").
        values: the initial `{name: float}`.
        dtype: the variables' dtype (default: `keras.config.floatx()`).
    """

    def __init__(self, owner, values, dtype=None):
        self.dtype = dtype or keras.config.floatx()
        self._values = {name: float(value) for name, value in values.items()}
        self._variables = {
            name: keras.Variable(
                float(value),
                dtype=self.dtype,
                trainable=False,
                name=f"{owner}_{name}",
            )
            for name, value in values.items()
        }

    @property
    def variables(self):
        """The variables, in a fixed order."""
        return list(self._variables.values())

    def assign(self, **values):
        """Assigns new Python values (rounded once to `dtype`)."""
        unknown = set(values) - set(self._variables)
        if unknown:
            raise ValueError(
                f"Unknown hyperparameters {sorted(unknown)}; valid: "
                f"{sorted(self._variables)}"
            )
        for name, value in values.items():
            self._values[name] = float(value)
            self._variables[name].assign(float(value))

    def read(self, name, dtype=None):
        """The value as a tensor of `dtype` (the variables' by default).

        In another dtype than the variables' (floatx changed since they
        were made), the Python value rounded once to `dtype`: a constant,
        exact, though a program holding it is not reused.
        """
        standard = keras.backend.standardize_dtype
        if dtype is None or standard(dtype) == self.dtype:
            return self._variables[name].value
        return constant(self._values[name], dtype)
