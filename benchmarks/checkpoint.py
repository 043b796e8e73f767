"""Checkpoint cost: file size and how long RunState's commit stalls training.

Builds ResNet-18 for CIFAR-10, compiled as `run_experiment` compiles it
(ParamGroupOptimizer around SGD with momentum 0.9), fits one tiny step so
the optimizer builds its momentum, then commits one epoch's checkpoint per
round through `RunState`'s own callback methods on a temporary directory,
alternating between a write at once ("sync") and one on the background
thread ("background"), and between an epoch that is not the best so far
(the checkpoint alone) and one that is (the best-epoch weights too, as in
early training). Prints:

- the checkpoint's size, and the size the same file had when the wrapper
  saved the inner optimizer's variables twice (issue 17);
- per mode and kind of epoch, the time `on_epoch_end` holds up training,
  and the time until the checkpoint is committed (median and min).

The first commit of a `RunState` also learns the file layout (one
`model.save_weights`); it is timed apart. Compare the stall with an epoch:
about 2 s for CIFAR-10 on an H200.

    python benchmarks/checkpoint.py [--rounds 5]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bninit as kb  # noqa: E402
from keras_bninit.harness.checkpoints import RunState  # noqa: E402

MODES = {"sync": None, "background": 0}  # RunState's background_bytes


def _fitted_resnet18():
    from keras_bninit import models

    keras.utils.set_random_seed(0)
    model = models.build("resnet18", num_classes=10, input_shape=(32, 32, 3))
    model.compile(
        kb.ParamGroupOptimizer(
            keras.optimizers.SGD(0.1, momentum=0.9),
            gamma_lr_divisor=100,
            weight_decay=1e-4,
        ),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    rng = np.random.default_rng(0)
    x = rng.random((8, 32, 32, 3), dtype="float32")
    model.fit(x, rng.integers(0, 10, 8), batch_size=8, epochs=1, verbose=0)
    return model


def _commit(state, epoch, val_accuracy):
    """(seconds on_epoch_end held training, seconds until committed)."""
    logs = {"loss": 1.0, "accuracy": 0.5, "val_accuracy": val_accuracy}
    state.on_epoch_begin(epoch)
    start = time.perf_counter()
    state.on_epoch_end(epoch, logs)
    held = time.perf_counter() - start
    state.wait()
    return held, time.perf_counter() - start


def _size_with_state_twice(model, directory):
    """The file size when the optimizer's variables were saved twice."""
    own = kb.ParamGroupOptimizer.__dict__
    saved = {m: own[m] for m in ("save_own_variables", "load_own_variables")}
    base = keras.optimizers.Optimizer
    path = os.path.join(directory, "twice.weights.h5")
    try:
        for method in saved:
            setattr(kb.ParamGroupOptimizer, method, getattr(base, method))
        model.save_weights(path)
    finally:
        for method, function in saved.items():
            setattr(kb.ParamGroupOptimizer, method, function)
    return os.path.getsize(path)


def _mb(n):
    return f"{n / 1e6:.1f} MB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    model = _fitted_resnet18()
    kinds = ("checkpoint", "with best")
    with tempfile.TemporaryDirectory() as tmp:
        states = {
            mode: RunState(os.path.join(tmp, mode), background_bytes=value)
            for mode, value in MODES.items()
        }
        for state in states.values():
            state.set_model(model)
        first = {m: _commit(s, 0, 0.1)[1] for m, s in states.items()}
        times = {(mode, kind): [] for mode in MODES for kind in kinds}
        for epoch in range(1, 2 * args.rounds + 1):
            kind = kinds[epoch % 2]
            # Odd epochs are the best so far, even ones are not.
            accuracy = 0.1 + epoch / 1e3 if epoch % 2 else 0.0
            for mode, state in states.items():
                times[mode, kind].append(_commit(state, epoch, accuracy))
        newest = f"backup/ckpt-{2 * args.rounds + 1:04d}/weights.weights.h5"
        size = os.path.getsize(os.path.join(tmp, "sync", newest))
        twice = _size_with_state_twice(model, tmp)

    momentum = sum(
        keras.ops.convert_to_numpy(m).nbytes
        for m in model.optimizer.inner_optimizer.momentums
    )
    print(f"backend: {keras.backend.backend()}, model: resnet18 (CIFAR-10)")
    print(
        f"checkpoint file: {_mb(size)} (optimizer state twice: "
        f"{_mb(twice)}; momentum {_mb(momentum)})"
    )
    first = ", ".join(f"{mode} {t:.3f} s" for mode, t in first.items())
    print(f"first commit (also learns the file layout): {first}")
    for (mode, kind), timings in times.items():
        held = [h for h, _ in timings]
        total = [t for _, t in timings]
        print(
            f"{mode:>10}, {kind:>10}: training held "
            f"{statistics.median(held):.3f} s (min {min(held):.3f}), "
            f"committed after {statistics.median(total):.3f} s "
            f"(min {min(total):.3f}); {len(timings)} epochs"
        )


if __name__ == "__main__":
    main()
