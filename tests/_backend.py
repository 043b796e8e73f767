"""Backend-agnostic test helpers: gradients on TensorFlow, JAX and PyTorch,
and child processes on another backend.

Keras 3 has no backend-neutral gradient API, so `gradients` dispatches to
each backend's own (tf.GradientTape, jax.grad over a StatelessScope,
torch.autograd); TensorFlow is imported only on the TensorFlow backend.
Keras fixes its backend when imported, so another backend (or a clean
interpreter) needs a process of its own: `run_python`.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_PY = str(ROOT / "train.py")


def run_python(*args, backend=None, env=None, cwd=ROOT, timeout=300):
    """`python *args` in a child process; returns the `CompletedProcess`
    (text stdout and stderr).

    Args:
        *args: the interpreter's arguments (`"-c", code, ...` or a script).
        backend: sets KERAS_BACKEND; `""` removes it (Keras's default, or
            train.py's own choice); None leaves the environment's.
        env: the environment to start from (default `os.environ`);
            TensorFlow's start-up notes are muted in any case.
    """
    env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "":
        env.pop("KERAS_BACKEND", None)
    elif backend is not None:
        env["KERAS_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def gradients(loss_fn, variables):
    """(loss, [d loss / d v for v in variables]) as NumPy values.

    Args:
        loss_fn: a function of no arguments returning a scalar tensor; it
            reads `variables` (Keras variables) like any layer does.
        variables: the Keras variables to differentiate against.
    """
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn()
        grads = tape.gradient(loss, variables)
    elif BACKEND == "jax":
        import jax

        def stateless(values):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_fn()

        values = [v.value for v in variables]
        loss, grads = jax.value_and_grad(stateless)(values)
    elif BACKEND == "torch":
        import torch

        loss = loss_fn()
        grads = torch.autograd.grad(
            loss, [v.value for v in variables], allow_unused=True
        )
    else:  # pragma: no cover
        raise ValueError(f"Unsupported backend {BACKEND!r}")
    return float(to_numpy(loss)), [
        None if g is None else np.asarray(to_numpy(g)) for g in grads
    ]
