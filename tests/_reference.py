"""NumPy references of the authors' PyTorch training, shared by tests."""

import keras
import numpy as np


def _per_group_cosine(base_lr, eta_min, epochs, epoch):
    """CosineAnnealingLR's closed form for one group (its own base rate)."""
    return (
        eta_min + (base_lr - eta_min) * (1 + np.cos(np.pi * epoch / epochs)) / 2
    )


def _pytorch_dense_bn_dense(params, batches, lr_of, wd, momentum=0.9):
    """Dense (no bias) -> BN -> Dense with MSE, trained as PyTorch does.

    SGD with momentum, dampening 0 and coupled L2 on the kernels:
    g <- g + wd * w; buf = momentum * buf + g; w <- w - lr * buf, with
    `lr_of(name, step)` the group's rate. BN normalizes with the biased
    batch variance and keeps running = 0.9 * running + 0.1 * batch with
    the unbiased one (eps 1e-5). Float64 throughout.
    """
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    running_mean, running_var = np.zeros(4), np.ones(4)
    buffers = {k: np.zeros_like(v) for k, v in p.items()}
    for step, (x, y) in enumerate(batches):
        n = len(x)
        # Forward.
        h = x @ p["kernel1"]
        mean, var = h.mean(axis=0), h.var(axis=0)
        inv_std = 1.0 / np.sqrt(var + 1e-5)
        x_hat = (h - mean) * inv_std
        z = p["gamma"] * x_hat + p["beta"]
        out = z @ p["kernel2"] + p["bias2"]
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * h.var(axis=0, ddof=1)
        # Backward of mean((out - y)^2).
        d_out = 2.0 * (out - y) / out.size
        d_z = d_out @ p["kernel2"].T
        d_x_hat = d_z * p["gamma"]
        d_h = (
            inv_std
            / n
            * (
                n * d_x_hat
                - d_x_hat.sum(axis=0)
                - x_hat * (d_x_hat * x_hat).sum(axis=0)
            )
        )
        grads = {
            "kernel2": z.T @ d_out,
            "bias2": d_out.sum(axis=0),
            "gamma": (d_z * x_hat).sum(axis=0),
            "beta": d_z.sum(axis=0),
            "kernel1": x.T @ d_h,
        }
        for name, g in grads.items():
            if name.startswith("kernel"):
                g = g + wd * p[name]
            buffers[name] = momentum * buffers[name] + g
            p[name] = p[name] - lr_of(name, step) * buffers[name]
    return p, running_mean, running_var


def dense_bn_dense(bn):
    """The Keras model `_pytorch_dense_bn_dense` trains: Dense(4) without
    bias (a bias before BN only gets round-off) -> `bn` -> Dense(2), on 3
    inputs, weights seeded with 0. Returns `(model, {name: variable})`
    with the reference's parameter names."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = bn(keras.layers.Dense(4, use_bias=False, name="fc1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc2")(h))
    fc1, fc2 = model.get_layer("fc1"), model.get_layer("fc2")
    names = {
        "kernel1": fc1.kernel,
        "gamma": bn.gamma,
        "beta": bn.beta,
        "kernel2": fc2.kernel,
        "bias2": fc2.bias,
    }
    return model, names
