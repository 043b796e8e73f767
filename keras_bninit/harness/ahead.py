"""The next program of a sweep traced while the current run trains.

A worker trains its runs one after another, and the first run of each
program traces and compiles its train and evaluation steps: 1.3-1.5 s of
the demo's resnet8 on 2 CPU cores, tens of seconds under XLA on a GPU.
When the sweep tells the worker which runs come next
(`ProgramCache.expect`), the worker builds the next program it has not
built, in the training thread between two epochs of the current run, and
calls its train and evaluation steps once, on batches of zeros, on a thread
of their own (`Ahead`) while the current run trains. The next run's first
epoch then costs a steady one. The step taken on zeros changes nothing a
run sees: acquiring a program sets every variable of the model and the
optimizer, as after any earlier run (`ProgramCache.acquire`).

TensorFlow backend only: JAX's compiled steps are cached across processes
(`harness.jax_cache`) and PyTorch's are not compiled.
"""

import threading

import keras


def zeros_like_spec(tf, spec, batch_size):
    """A repeating `tf.data.Dataset` of zeros whose `element_spec` is
    `spec`, in batches of `batch_size` where their first dimension is
    unknown (XLA compiles for each batch shape), or None where zeros cannot
    give that spec."""

    def leading(s):
        return s.shape.rank and s.shape[0] is None

    specs = tf.nest.flatten(spec)
    if not specs or not all(isinstance(s, tf.TensorSpec) for s in specs):
        return None
    if any(d is None for s in specs for d in s.shape[1:]):
        return None
    if all(leading(s) for s in specs):  # batches of an unknown size
        zeros = tf.nest.map_structure(
            lambda s: tf.zeros([batch_size, *s.shape[1:]], s.dtype), spec
        )
        dataset = tf.data.Dataset.from_tensor_slices(zeros).batch(batch_size)
    elif not any(leading(s) for s in specs):
        zeros = tf.nest.map_structure(
            lambda s: tf.zeros(s.shape, s.dtype), spec
        )
        dataset = tf.data.Dataset.from_tensors(zeros)
    else:
        return None
    dataset = dataset.repeat()
    return dataset if dataset.element_spec == spec else None


class Ahead(threading.Thread):
    """Calls a compiled model's train and evaluation steps once each, on
    zeros, on its own thread: tracing and compiling them (TensorFlow)
    while the thread that started it trains another program.

    Made and started in the training thread; `join` it before the model
    is used, dropped or its session cleared, then read `error`.

    Args:
        fit_model: the compiled model (`make_train_function` and
            `make_test_function` already called, its optimizer built).
        train_data, eval_data: `tf.data.Dataset`s of zeros with the
            element specs of the data `fit` and `evaluate` will get.
    """

    def __init__(self, fit_model, train_data, eval_data):
        super().__init__(name="keras_bninit program ahead", daemon=False)
        self.fit_model = fit_model
        # Keras keeps its global dtype policy per thread: the steps are
        # traced under the one `fit` would trace them under, the starter's.
        self._policy = keras.config.dtype_policy()
        self._data = (iter(train_data), iter(eval_data))
        self.error = None

    def run(self):
        try:
            keras.config.set_dtype_policy(self._policy)  # this thread's
            train, evaluation = self._data
            self.fit_model.train_function(train)
            self.fit_model.test_function(evaluation)
        except BaseException as error:  # noqa: BLE001 - read after join
            self.error = error
        finally:
            self._data = None
