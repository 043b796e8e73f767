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


# The core's test modules (layers, formulations, optimizer numerics,
# retrofit, seeding, precise BN, every model's build/fit/save-load, the
# torchvision mapping, the import graph): backend-agnostic, marked `core`.
# CI runs them on every backend (`KERAS_BACKEND=jax pytest -m core`); the
# other modules test the harness, which needs TensorFlow (tf.data), and are
# not collected on another backend.
CORE_MODULES = frozenset(
    {
        "test_activations.py",
        "test_backends.py",
        "test_create_model.py",
        "test_initializers.py",
        "test_layers.py",
        "test_memory.py",
        "test_norms.py",
        "test_optimizers.py",
        "test_precise_bn.py",
        "test_retrofit.py",
        "test_saving.py",
        "test_seeding.py",
        "test_torch_names.py",
        "test_validation.py",
    }
)


def pytest_ignore_collect(collection_path, config):
    if (
        keras.backend.backend() != "tensorflow"
        and collection_path.suffix == ".py"
        and collection_path.name.startswith("test_")
        and collection_path.name not in CORE_MODULES
    ):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in CORE_MODULES:
            item.add_marker(pytest.mark.core)


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


@pytest.fixture(autouse=True)
def _new_sweep_worker(monkeypatch):
    """Each test's sweeps start with a worker of their own (no compiled
    programs or data kept from another test), as each sweep process does;
    sharing within a worker is tested in test_programs.py."""
    from keras_bninit.harness import programs

    monkeypatch.setattr(programs, "_WORKER", {})


@pytest.fixture
def float64():
    """Keras's floatx is float64 for the test (JAX in 64-bit mode), then
    restored."""
    from keras.src.backend.common import global_state

    previous = keras.config.floatx()
    # None (follow floatx) unless a test set a policy.
    policy = global_state.get_global_attribute("dtype_policy")
    x64 = None
    if keras.backend.backend() == "jax":
        import jax

        x64 = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(previous)
        global_state.set_global_attribute("dtype_policy", policy)
        if x64 is not None:
            import jax

            jax.config.update("jax_enable_x64", x64)
