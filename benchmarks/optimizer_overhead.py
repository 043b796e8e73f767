"""Training-step throughput: ParamGroupOptimizer vs stock Keras SGD.

Both train the same network on the same random images with model.fit, in
the same process; the figure that matters is the ratio. Stock SGD uses
Keras's own (decoupled) weight_decay, so both do the same amount of work.

    python benchmarks/optimizer_overhead.py [--model resnet8] [--steps 50]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bninit as kb  # noqa: E402


def _model(name, input_shape):
    from keras_bninit import models

    return models.build(name, num_classes=10, input_shape=input_shape)


def _fitted(make_optimizer, args):
    """A compiled model, its data, and one warm-up epoch done."""
    keras.utils.set_random_seed(0)
    model = _model(args.model, (args.size, args.size, 3))
    model.compile(
        make_optimizer(),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=args.jit,
    )
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.random((n, args.size, args.size, 3), dtype="float32")
    y = rng.integers(0, 10, n)
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    return model, x, y


def _epoch_images_per_s(fitted, args):
    model, x, y = fitted
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)
    return len(x) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="XLA")
    args = parser.parse_args()

    candidates = {
        "stock": _fitted(
            lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4),
            args,
        ),
        "ours": _fitted(
            lambda: kb.ParamGroupOptimizer(
                keras.optimizers.SGD(0.1, momentum=0.9), weight_decay=1e-4
            ),
            args,
        ),
    }
    # Alternate the two so drifts of the machine hit both alike; keep each
    # one's best epoch.
    best = dict.fromkeys(candidates, 0.0)
    for _ in range(args.repeats):
        for name, fitted in candidates.items():
            best[name] = max(best[name], _epoch_images_per_s(fitted, args))
    stock, ours = best["stock"], best["ours"]
    print(
        f"model={args.model} size={args.size} batch={args.batch_size} "
        f"jit={args.jit}"
    )
    print(f"stock SGD            {stock:9.1f} img/s")
    print(f"ParamGroupOptimizer  {ours:9.1f} img/s")
    print(f"ratio ours/stock     {ours / stock:9.3f}")


if __name__ == "__main__":
    main()
