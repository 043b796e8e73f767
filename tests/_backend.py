"""Backend-agnostic test helpers: gradients on TensorFlow, JAX and PyTorch.

Keras 3 has no backend-neutral gradient API, so `gradients` dispatches to
each backend's own (tf.GradientTape, jax.grad over a StatelessScope,
torch.autograd); TensorFlow is imported only on the TensorFlow backend.
"""

import keras
import numpy as np

BACKEND = keras.backend.backend()


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
