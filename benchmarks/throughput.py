"""Training throughput on any Keras backend: stock Keras against the method.

Times `model.fit` on synthetic images (NumPy, made once) for two builds of
the same architecture in one process, alternating rounds so that drifts of
the machine hit both alike:

- stock: `keras.layers.BatchNormalization` everywhere (scale 1) and
  `keras.optimizers.SGD(lr, momentum, weight_decay)`;
- ours: the method's BN layers with scale c = 0.1 and the input BN
  (`bn_gamma=0.1, input_bn=True`), trained with `ParamGroupOptimizer`
  (scale lr / 100, coupled weight decay on the kernels).

It imports no TensorFlow itself (on the JAX and PyTorch backends none is
loaded), so it runs where only Keras and the backend are installed:

    KERAS_BACKEND=jax python benchmarks/throughput.py --model resnet18 \\
        --batch-size 128 --precision mixed_bfloat16

Prints one line per candidate (best and median images/s over the rounds)
and the ratio ours/stock of the best rounds.
"""

import argparse
import os
import statistics
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _backend_from_argv(argv):
    """`--backend NAME` / `--backend=NAME`, read before Keras is imported
    (Keras fixes its backend at import)."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


def _parser(model_names):
    parser = argparse.ArgumentParser(
        description="Training throughput (img/s): stock Keras BN + SGD "
        "against the method's BN + ParamGroupOptimizer, on any backend."
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: KERAS_BACKEND, else Keras's default)",
    )
    parser.add_argument("--model", default="resnet8", choices=model_names)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument(
        "--steps", type=int, default=20, help="training steps per round"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed steps (compilation)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    return parser


def _positive(parser, args):
    for name in (
        "batch_size",
        "steps",
        "warmup",
        "rounds",
        "image_size",
        "num_classes",
    ):
        value = getattr(args, name)
        minimum = 2 if name == "num_classes" else 1
        if value < minimum:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= {minimum}; received {value}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    backend = _backend_from_argv(argv)
    if backend in BACKENDS:
        os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import numpy as np

    import keras_bninit as kb
    from keras_bninit import models

    parser = _parser(models.available())
    args = parser.parse_args(argv)
    _positive(parser, args)
    keras.mixed_precision.set_dtype_policy(args.precision)
    shape = (args.image_size, args.image_size, 3)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def stock_bn(gamma, name):
        del gamma  # stock Keras: scale 1
        return keras.layers.BatchNormalization(name=name)

    def compiled(kind):
        keras.utils.set_random_seed(0)
        if kind == "stock":
            model = models.build(
                args.model,
                num_classes=args.num_classes,
                input_shape=shape,
                norm_layer=stock_bn,
            )
            optimizer = keras.optimizers.SGD(
                args.lr, momentum=args.momentum, weight_decay=args.weight_decay
            )
        else:
            model = models.build(
                args.model,
                num_classes=args.num_classes,
                input_shape=shape,
                bn_gamma=0.1,
                input_bn=True,
            )
            optimizer = kb.ParamGroupOptimizer(
                keras.optimizers.SGD(args.lr, momentum=args.momentum),
                gamma_lr_divisor=100.0,
                weight_decay=args.weight_decay,
            )
        # mixed_float16: compile wraps the optimizer in a LossScaleOptimizer.
        model.compile(optimizer, loss)
        return model

    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.random((n, *shape), dtype="float32")
    y = rng.integers(0, args.num_classes, n)
    warm = args.batch_size * args.warmup
    candidates = {kind: compiled(kind) for kind in ("stock", "ours")}
    for model in candidates.values():  # compile and warm up
        model.fit(x[:warm], y[:warm], batch_size=args.batch_size, verbose=0)

    rates = {kind: [] for kind in candidates}
    for _ in range(args.rounds):
        for kind, model in candidates.items():
            start = time.perf_counter()
            history = model.fit(
                x, y, batch_size=args.batch_size, shuffle=False, verbose=0
            )
            elapsed = time.perf_counter() - start
            if not np.isfinite(history.history["loss"][-1]):
                raise SystemExit(f"{kind}: the loss is not finite")
            rates[kind].append(n / elapsed)

    print(
        f"backend={keras.backend.backend()} model={args.model} "
        f"batch={args.batch_size} precision={args.precision} "
        f"image={args.image_size} steps={args.steps} rounds={args.rounds}"
    )
    labels = {
        "stock": "stock BN + SGD",
        "ours": "ours (c=0.1, input BN) + ParamGroupOptimizer",
    }
    for kind, values in rates.items():
        print(
            f"{labels[kind]:46s} best {max(values):10.1f} img/s  "
            f"median {statistics.median(values):10.1f} img/s"
        )
    ratio = max(rates["ours"]) / max(rates["stock"])
    print(f"ratio ours/stock (best rounds) {ratio:.3f}")
    return rates


if __name__ == "__main__":
    main()
