"""A small Keras CNN on digits, retrofitted, after a short fit: why it can
evaluate near chance, and what fixes it.

A stock `BatchNormalization` keeps running statistics with momentum 0.99.
`kb.retrofit` resets them to mean 0, variance 1 and starts every scale at
c; with c = 0.1 a later BN's input has a variance near c^2 = 0.01, and a
running variance that starts at 1 keeps 0.99^T of that start after T steps
(0.4 after 90 steps): evaluation divides by a variance far too large. The
trained weights can be fine while the statistics are not. Prints, per
variant, the mean over the seeds of the last epoch's training accuracy,
the test accuracy with the running statistics, and the test accuracy
after `kb.update_bn_stats` (population statistics of 200 training
batches):

- plain: the CNN as built (c = 1, Keras's BN, momentum 0.99);
- retrofit c: `kb.retrofit(model, gamma=c)` and `ParamGroupOptimizer`
  (a = 100), the same fit;
- with momentum 0.9: retrofitted BNs with the paper's momentum 0.9
  (running statistics that catch up in tens of steps).

    python benchmarks/short_runs.py --epochs 2 --seeds 1-3
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="1-3")
    parser.add_argument("--gamma", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args()


def _cnn(keras):
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _accuracy(keras, model, data):
    x, y = data
    logits = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    return float((logits.argmax(axis=1) == y).mean())


def main():
    args = _args()
    import keras
    import numpy as np

    import keras_bninit as kb
    from keras_bninit.harness.datasets import load_raw
    from keras_bninit.harness.presets import parse_seeds

    _, raw = load_raw("digits")
    scale = np.float32(1.0 / raw.pixel_max)
    train = (raw.train_images.astype("float32") * scale, raw.train_labels)
    test = (raw.test_images.astype("float32") * scale, raw.test_labels)
    steps = -(-len(train[1]) // args.batch_size) * args.epochs
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variants = ("plain", f"retrofit c={args.gamma:g}", "  with momentum 0.9")
    rows = {v: [] for v in variants}
    for seed in parse_seeds(args.seeds):
        for variant in variants:
            keras.utils.set_random_seed(seed)
            model = _cnn(keras)
            sgd = keras.optimizers.SGD(args.lr, momentum=0.9)
            if variant != "plain":
                model = kb.retrofit(model, gamma=args.gamma)
                if "momentum" in variant:
                    for layer in kb.batch_norm_layers(model):
                        layer.momentum = 0.9
                sgd = kb.ParamGroupOptimizer(sgd, gamma_lr_divisor=100.0)
            model.compile(sgd, loss, metrics=["accuracy"])
            history = model.fit(
                *train,
                batch_size=args.batch_size,
                epochs=args.epochs,
                verbose=0,
            )
            running = _accuracy(keras, model, test)
            kb.update_bn_stats(model, train[0], batch_size=args.batch_size)
            precise = _accuracy(keras, model, test)
            train_accuracy = history.history["accuracy"][-1]
            rows[variant].append((train_accuracy, running, precise))
    print(
        f"digits, {args.epochs} epochs of batch {args.batch_size} "
        f"({steps} steps), SGD lr {args.lr:g} momentum 0.9, seeds "
        f"{args.seeds}, Keras {keras.__version__} on "
        f"{keras.backend.backend()}; mean accuracies in %"
    )
    print(f"{'':22s} {'train':>6s} {'test':>6s} {'test, precise BN':>17s}")
    for variant, values in rows.items():
        train_mean, running, precise = 100 * np.mean(values, axis=0)
        print(f"{variant:22s} {train_mean:6.1f} {running:6.1f} {precise:17.1f}")


if __name__ == "__main__":
    main()
