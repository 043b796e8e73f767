import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402  (after KERAS_BACKEND is set)
import pytest  # noqa: E402

if keras.backend.backend() == "torch":
    import torch

    _tensor_array = torch.Tensor.__array__

    def _detached_array(self, *args, **kwargs):
        # Tests read outputs with NumPy (np.testing, np.array) as on the
        # other backends; PyTorch refuses tensors that require grad, so
        # read them detached, as keras.ops.convert_to_numpy does.
        return _tensor_array(self.detach(), *args, **kwargs)

    torch.Tensor.__array__ = _detached_array


@pytest.fixture(autouse=True)
def _isolate_op_determinism():
    """Each test starts with TensorFlow op determinism as the session had it.

    `set_seed` turns it on for the whole process, and Keras then silently
    trains `jit_compile=True` models without XLA; a test that turns it on
    has it turned off again afterwards, so later XLA tests really compile.
    """
    if keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework import config as tf_config

    before = tf_config.is_op_determinism_enabled()
    yield
    if tf_config.is_op_determinism_enabled() != before:
        if before:
            tf_config.enable_op_determinism()
        else:
            tf_config.disable_op_determinism()
