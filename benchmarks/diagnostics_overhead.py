"""Epoch time with and without the diagnostics callbacks.

A small conv-BN-ReLU net (input BN, 3 x conv 3x3 with 32 channels) on
sklearn's digits (8x8x1, pixel values / 16, 1437 training images), SGD,
batch 32. The same model (same seed) is trained twice, once plain and once
with `keras_bninit.harness.diagnostics.diagnostic_callbacks` recording every
epoch on the default probe (the first 128 training images). The first
epoch of each run (tracing) is left out of the medians.

    python benchmarks/diagnostics_overhead.py [--epochs 6]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_bninit import InputBatchNorm, batch_norm  # noqa: E402
from keras_bninit.harness.diagnostics import (  # noqa: E402
    DEFAULT_PROBE_SIZE,
    diagnostic_callbacks,
)

# ------------------------------------------------------------------ config

GAMMA = 0.1
WIDTH = 32
BATCH_SIZE = 32
LEARNING_RATE = 0.05
SEED = 0


# -------------------------------------------------------------------- data


def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_train = int(0.8 * len(x))
    return x[:n_train], y[:n_train]


# ----------------------------------------------------------------- network


def network():
    keras.utils.set_random_seed(SEED)
    inputs = keras.Input((8, 8, 1))
    h = InputBatchNorm(gamma=GAMMA)(inputs)
    for _ in range(3):
        h = keras.layers.Conv2D(WIDTH, 3, padding="same", use_bias=False)(h)
        h = batch_norm(gamma=GAMMA)(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


# ------------------------------------------------------------------ timing


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch. Put it last: Keras runs callbacks in list
    order, so its epoch end comes after the diagnostics' work."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def timed(callback, spent):
    """Adds the time `callback` spends at each epoch end to `spent`."""
    on_epoch_end = callback.on_epoch_end

    def wrapper(epoch, logs=None):
        start = time.perf_counter()
        on_epoch_end(epoch, logs)
        spent[epoch] = spent.get(epoch, 0.0) + time.perf_counter() - start

    callback.on_epoch_end = wrapper
    return callback


def train(x, y, epochs, extra):
    """Per-epoch times and the whole `fit` time (initial record included)."""
    timer = EpochTimer()
    model = network()
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=BATCH_SIZE,
        epochs=epochs,
        verbose=0,
        callbacks=[*extra, timer],
    )
    return np.array(timer.times), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    x, y = digits()
    plain, plain_fit = train(x, y, args.epochs, [])
    spent = {}
    with tempfile.TemporaryDirectory() as run_dir:
        callbacks = diagnostic_callbacks(run_dir, x)
        callbacks = [timed(c, spent) for c in callbacks]
        with_diag, diag_fit = train(x, y, args.epochs, callbacks)
    spent = np.array([spent[e] for e in sorted(spent)])
    print(
        f"digits: {len(x)} training images, batch {BATCH_SIZE}, "
        f"probe {DEFAULT_PROBE_SIZE} images, diagnostics every epoch"
    )
    print("epoch times without (s):", np.round(plain, 3).tolist())
    print("epoch times with    (s):", np.round(with_diag, 3).tolist())
    print("in the callbacks    (s):", np.round(spent, 4).tolist())
    # The CPU is shared, so epoch times are noisy: the fastest epoch (after
    # the first, which traces) is the cleanest estimate of each, and the
    # time measured inside the callbacks does not depend on the noise.
    base, diag = plain[1:].min(), with_diag[1:].min()
    inside = np.median(spent[1:])
    print(
        f"fastest epoch: {base:.3f} s without, {diag:.3f} s with, "
        f"ratio {diag / base:.3f}"
    )
    print(
        f"median time in the callbacks: {1000 * inside:.1f} ms per epoch, "
        f"{100 * inside / base:.1f} % of the fastest plain epoch"
    )
    print(
        f"whole fit ({args.epochs} epochs, tracing and the initial record "
        f"included): {plain_fit:.2f} s without, {diag_fit:.2f} s with"
    )


if __name__ == "__main__":
    main()
