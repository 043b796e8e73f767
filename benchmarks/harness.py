"""The harness's cost: `run_experiment` end to end against `model.fit` alone.

Times, in one process and in alternating rounds (round 1: model-only then
harness, round 2: harness then model-only, ...) so that drifts of the
machine hit both alike:

- model-only: a plain `model.fit` of the harness's model (the method's BN
  with c = 0.1 and the input BN), optimizer (`ParamGroupOptimizer` around
  SGD with momentum 0.9 and the per-epoch cosine schedule, a = 100, weight
  decay 1e-4), precision and compile arguments, on float32 NumPy arrays of
  as many images as the harness trains on (45,000 x 32x32x3 for the
  default size), whole epochs shuffled as `fit` shuffles, no validation,
  no checkpoints;
- harness: `run_experiment(RunConfig(dataset="synthetic", ...))` in a fresh
  temporary directory: its input path, the validation after every epoch,
  the checkpoint written and fsynced every epoch, the history, and (not
  timed) the test evaluation and model.keras.

The first epoch of each, which compiles, is left out: the figures are over
epochs 2..E. Images counted are training images (the validation images the
harness also runs through are its cost, not its output). Figures:

- model-only img/s: training images / the wall time of epochs 2..E, each
  from `on_epoch_begin` to `on_epoch_end`;
- harness img/s: the same over the run's own `history["epoch_time_s"][1:]`
  (an epoch as `RunState` times it: training and validation, not its own
  checkpoint write);
- harness end to end img/s: training images of epochs 2..E / the time from
  the start of epoch 2 until the last epoch's checkpoint is committed (when
  `RunState`'s `on_train_end` returns): every checkpoint write of those
  epochs is inside, whether it ran at once or on a background thread.

It imports no TensorFlow itself; on JAX and PyTorch with `--input memory`
none is loaded, so it runs where only Keras and the backend are installed:

    python benchmarks/harness.py --backend jax --model resnet18 \\
        --batch-size 128 --precision mixed_bfloat16

Quick on a CPU (a few minutes on 2 cores):

    python benchmarks/harness.py --backend jax --model resnet8 \\
        --batch-size 64 --synthetic-size 5000

The last line is `harness/model-only: R`, the ratio of the medians of the
harness img/s and the model-only img/s.
"""

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
INPUTS = ("tfdata", "memory")
KINDS = ("model-only", "harness")

# The run's settings `run_experiment` fills in for the synthetic data set;
# model-only repeats them (Section 4.2).
LR, MOMENTUM, GAMMA, GAMMA_LR_DIVISOR, WEIGHT_DECAY = 0.1, 0.9, 0.1, 100, 1e-4
NUM_CLASSES, IMAGE_SHAPE, VAL_FRACTION = 10, (32, 32, 3), 0.1


def _parser():
    parser = argparse.ArgumentParser(
        description="The harness's throughput (run_experiment end to end: "
        "input, validation, checkpoints) against model.fit of the same "
        "model on arrays in memory, in img/s over epochs 2..E."
    )
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--model", required=True, help="a model-zoo name")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument(
        "--input",
        choices=INPUTS,
        help="the harness's input path (default: the harness's default for "
        "the backend)",
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="per run; the first is untimed"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--synthetic-size",
        type=int,
        default=50_000,
        help="training images before the 10 %% validation split",
    )
    parser.add_argument("--steps-per-execution", type=int, default=1)
    return parser


def _check(parser, args):
    minimums = {
        "batch_size": 1,
        "epochs": 2,  # epoch 1 compiles and is not timed
        "rounds": 1,
        "synthetic_size": 20,  # the harness's own minimum
        "steps_per_execution": 1,
    }
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value < minimum:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} must be >= {minimum}; received {value}")
    if args.backend == "torch" and args.steps_per_execution > 1:
        parser.error(
            "--steps-per-execution > 1 is not supported by Keras on torch; "
            f"received {args.steps_per_execution}"
        )


def _num_train(size):
    # The harness holds out ceil(10 %) for validation (`validation_split`).
    return size - math.ceil(VAL_FRACTION * size)


def _rate(images_per_epoch, seconds):
    return images_per_epoch * len(seconds) / sum(seconds)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    # Keras fixes its backend at import.
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import numpy as np

    import keras_bninit as kb
    from keras_bninit import models
    from keras_bninit.harness import experiment

    if args.model not in models.available():
        parser.error(
            f"unknown --model {args.model!r}; valid: "
            f"{', '.join(models.available())}"
        )

    class EpochClock(keras.callbacks.Callback):
        """Wall time of each epoch, `on_epoch_begin` to `on_epoch_end`."""

        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self._start)

    def timed_run_state(clock):
        """`RunState` noting when epoch 2 starts and when training ends.

        It is the last of the harness's callbacks; an epoch's checkpoint is
        committed in its `on_epoch_end`, or, written in the background, by
        the time its `on_train_end` returns (it waits for the write). So the
        end is when the last epoch's checkpoint is committed.
        """

        class TimedRunState(experiment.RunState):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1:
                    clock["start"] = time.perf_counter()
                super().on_epoch_begin(epoch, logs)

            def on_train_end(self, logs=None):
                super().on_train_end(logs)
                clock["end"] = time.perf_counter()

        return TimedRunState

    @contextlib.contextmanager
    def clocked_checkpoints():
        # run_experiment makes its RunState by this module-level name.
        clock, original = {}, experiment.RunState
        experiment.RunState = timed_run_state(clock)
        try:
            yield clock
        finally:
            experiment.RunState = original

    # -- data: the arrays model-only trains on, made once -----------------
    n = _num_train(args.synthetic_size)
    rng = np.random.default_rng(0)
    x = rng.random((n, *IMAGE_SHAPE), dtype="float32")
    y = (np.arange(n) % NUM_CLASSES).astype("int64")
    rng.shuffle(y)

    def model_only():
        keras.backend.clear_session()
        keras.utils.set_random_seed(1)
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(args.precision)
        try:
            model = models.build(
                args.model,
                num_classes=NUM_CLASSES,
                input_shape=IMAGE_SHAPE,
                bn_gamma=GAMMA,
                input_bn=True,
            )
        finally:
            keras.config.set_dtype_policy(previous)
        steps_per_epoch = math.ceil(n / args.batch_size)
        schedule = kb.EpochCosineDecay(
            LR, steps_per_epoch, args.epochs, eta_min=1e-8
        )
        optimizer = kb.ParamGroupOptimizer(
            keras.optimizers.SGD(schedule, momentum=MOMENTUM),
            gamma_lr_divisor=GAMMA_LR_DIVISOR,
            weight_decay=WEIGHT_DECAY,
        )
        if args.precision == "mixed_float16":  # as the harness wraps it
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=args.steps_per_execution,
        )
        clock = EpochClock()
        history = model.fit(
            x,
            y,
            batch_size=args.batch_size,
            epochs=args.epochs,
            shuffle=True,
            verbose=0,
            callbacks=[clock],
        )
        if not np.isfinite(history.history["loss"][-1]):
            raise SystemExit("model-only: the loss is not finite")
        return {"img/s": _rate(n, clock.seconds[1:])}

    resolved = {}

    def harness():
        keras.backend.clear_session()
        with (
            tempfile.TemporaryDirectory(prefix="harness-bench-") as out,
            clocked_checkpoints() as clock,
            warnings.catch_warnings(),
        ):
            # Accuracy is not what is measured here.
            warnings.filterwarnings("ignore", ".*optimizer steps are too few")
            config = experiment.RunConfig(
                dataset="synthetic",
                synthetic_size=args.synthetic_size,
                model=args.model,
                batch_size=args.batch_size,
                precision=args.precision,
                input=args.input,
                epochs=args.epochs,
                steps_per_execution=args.steps_per_execution,
                out=out,
                verbose=0,
                seed=1,
            )
            record = experiment.run_experiment(config, build_model=models.build)
        if record["status"] != "ok":
            raise SystemExit(f"harness: the run failed: {record['reason']}")
        num_train = record["data"]["num_train"]
        if num_train != n:
            raise SystemExit(
                f"harness: {num_train} training images, model-only {n}"
            )
        resolved["input"] = record["config"]["input"]
        seconds = record["history"]["epoch_time_s"][1:]
        end_to_end = num_train * len(seconds) / (clock["end"] - clock["start"])
        return {"img/s": _rate(num_train, seconds), "e2e": end_to_end}

    runs = {"model-only": model_only, "harness": harness}
    rates = {"model-only": [], "harness": [], "e2e": []}
    print(
        f"backend={keras.backend.backend()} model={args.model} "
        f"batch={args.batch_size} precision={args.precision} "
        f"input={args.input or 'default'} epochs={args.epochs} "
        f"rounds={args.rounds} synthetic_size={args.synthetic_size} "
        f"(train {n}) steps_per_execution={args.steps_per_execution}",
        flush=True,
    )
    print(
        "img/s = training images / seconds of epochs 2..E. model-only: "
        "model.fit on NumPy arrays, no validation. harness: run_experiment, "
        "epochs as its history times them (training + validation). end to "
        "end: from the start of epoch 2 until the last checkpoint is "
        "committed (checkpoint writes included).",
        flush=True,
    )
    for round_ in range(args.rounds):
        order = KINDS if round_ % 2 == 0 else KINDS[::-1]
        for kind in order:
            result = runs[kind]()
            rates[kind].append(result["img/s"])
            if "e2e" in result:
                rates["e2e"].append(result["e2e"])
            rate = result["img/s"]
            line = f"round {round_ + 1} {kind:10s} {rate:10.1f} img/s"
            if "e2e" in result:
                line += f"  (end to end {result['e2e']:.1f} img/s)"
            print(line, flush=True)

    medians = {kind: statistics.median(v) for kind, v in rates.items()}
    print(f"harness input path: {resolved['input']}")
    print(f"median model-only         {medians['model-only']:10.1f} img/s")
    print(f"median harness            {medians['harness']:10.1f} img/s")
    print(f"median harness end to end {medians['e2e']:10.1f} img/s")
    print(
        "harness end to end/model-only: "
        f"{medians['e2e'] / medians['model-only']:.3f}"
    )
    print(
        f"harness/model-only: {medians['harness'] / medians['model-only']:.3f}"
    )
    return medians


if __name__ == "__main__":
    main()
