"""A run's own model without a new build: its initial weights drawn again.

Every run of a sweep saves a model of its own (`model.keras` holds its c,
its initializers' seeds and its optimizer) and starts from exactly the
arrays that a fresh build under its seed gives. Building that model (Keras
creating some 50 layers and their variables) was the largest cost of a run
in a shared program outside its epochs: 50-70 ms of the demo's resnet8 on
TensorFlow, every run.

The model zoo draws every random initial value with NumPy from the run's
seed and the variable's key (`keras_bninit.initializers`), and every other
initial value is a constant. So a model built for an earlier run of the
same configuration (all but the seed), its initializers given the seeds
that a build under the new seed would give them, holds the initial weights
of that build: `InitialWeights.learn` finds out whether a built model is
such a model, and `draw` gives the arrays for the current seed.

A model is learned only when all of these hold; otherwise every run of its
configuration builds a fresh model, as before:

- every variable is one that its layer made from the layer's
  `<variable name>_initializer` attribute (Keras's convention; a depthwise
  kernel from `depthwise_initializer`), and that
  initializer is a `keras_bninit.initializers.VarianceScaling` whose seed
  came from `keras_bninit.seeding.variable_seed` during the build, each
  key once, or a Keras `Zeros`, `Ones` or `Constant`;
- the build drew nothing from Python's or NumPy's global generators (a
  skipped build would leave them elsewhere for the rest of the run);
- the arrays drawn again for the build's own seed equal its variables, bit
  for bit.
"""

import random

import keras
import numpy as np

from keras_bninit import seeding
from keras_bninit.harness.weights_layout import read_values
from keras_bninit.initializers import VarianceScaling

_NUMPY_FLOATS = ("float16", "float32", "float64")
_ALIASES = {"kernel": ("depthwise_initializer",)}
_CONSTANTS = (
    keras.initializers.Zeros,
    keras.initializers.Ones,
    keras.initializers.Constant,
)


class Draws:
    """What a build draws from the seeds: `variable_seed`'s keys and the
    global generators. Use it around the build, then pass it to `learn`."""

    def __enter__(self):
        self._weights_seed, self._draws = seeding.weight_draws()
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        return self

    def __exit__(self, *exc):
        seed, draws = seeding.weight_draws()
        self.keys = None
        if seed is not None and seed == self._weights_seed:
            self.keys = draws - self._draws
        self.global_untouched = random.getstate() == self._python and (
            _same_numpy_state(np.random.get_state(), self._numpy)
        )
        return False


def _same_numpy_state(a, b):
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


class InitialWeights:
    """A built model whose initial weights can be drawn again for a seed.

    Attributes:
        model: the model, whose initializers `draw` re-seeds.
    """

    def __init__(self, model, sources):
        self.model = model
        self._sources = sources  # per variable: (initializer, shape, dtype)

    @classmethod
    def learn(cls, model, draws, built=None):
        """An `InitialWeights` for `model`, just built within `draws`, or
        None where its initial weights cannot be drawn again (see the
        module's docstring). `built`: the model's arrays, where the caller
        has read them already."""
        if draws.keys is None or not draws.global_untouched:
            return None
        owners = {}
        for layer in model._flatten_layers(include_self=True, recursive=True):
            for variable in (
                *layer._trainable_variables,
                *layer._non_trainable_variables,
            ):
                owners[id(variable)] = layer
        sources = []
        keys = []
        for variable in model.variables:
            init = _initializer(owners.get(id(variable)), variable.name)
            if isinstance(init, VarianceScaling):
                keys.append(init.key)
            elif not isinstance(init, _CONSTANTS):
                return None
            dtype = keras.backend.standardize_dtype(variable.dtype)
            sources.append((init, tuple(variable.shape), dtype))
        if sorted(keys) != sorted(draws.keys.elements()) or len(
            set(keys)
        ) != len(keys):
            return None  # a seed given by hand, or a key drawn twice
        learned = cls(model, sources)
        if built is None:
            built = read_values(model.variables)
        again = learned._values()
        if not all(_same_bits(a, b) for a, b in zip(built, again)):
            return None
        return learned

    def draw(self):
        """The initial arrays of a fresh build under the current seed (of
        the last `keras_bninit.set_seed`), in `model.variables` order; the
        model's initializers (and so its saved config) take the seeds that
        build would give them."""
        for init, _, _ in self._sources:
            if isinstance(init, VarianceScaling):
                init.seed, init.index = seeding.variable_seed(init.key)
        return self._values()

    def _values(self):
        return [_initial_value(*source) for source in self._sources]


def _initializer(layer, name):
    """The initializer `layer` made its variable `name` from, by Keras's
    naming (a depthwise convolution's kernel comes from its
    `depthwise_initializer`), or None."""
    for attribute in (f"{name}_initializer", *_ALIASES.get(name, ())):
        init = getattr(layer, attribute, None)
        if init is not None:
            return init
    return None


def _initial_value(init, shape, dtype):
    """What `init(shape, dtype)` gives, as a NumPy array: computed in NumPy
    where that is the same arithmetic (float dtypes), else by the backend."""
    if dtype in _NUMPY_FLOATS:
        if isinstance(init, VarianceScaling):
            return init.values(shape).astype(dtype)  # as `_to_tensor` casts
        if isinstance(init, keras.initializers.Zeros):
            return np.zeros(shape, dtype)
        if isinstance(init, keras.initializers.Ones):
            return np.ones(shape, dtype)
        value = np.asarray(init.value, dtype)  # cast once, times ones
        if value.ndim == 0:
            return np.full(shape, value, dtype)
    return np.array(keras.ops.convert_to_numpy(init(shape, dtype)))


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    )
