"""Bounds on the sizes a run is given, so none can exhaust the machine.

Integers that pass the type check can still be absurd: a batch of 2**63
examples, 2**31 steps per execution, 2**31 synthetic images. `check_fields`
refuses what no data set can use before anything loads (one `ValueError`,
as `harness.config.validate` raises); `check_data` refuses what the loaded
data set cannot serve (a batch larger than its training split, more steps
per execution than an epoch has) with a `BadInputError`, before anything
is written. The command line turns both into one line and exit status 2.
"""

import os

# No data set here comes near these; larger values are mistakes.
MAX_BATCH_SIZE = 2**16
MAX_STEPS_PER_EXECUTION = 2**16
# A synthetic image is 32x32x3 uint8 plus its int64 label.
SYNTHETIC_BYTES = 32 * 32 * 3 + 8


class BadInputError(ValueError):
    """Arguments the data cannot serve, found once it is loaded: bad input,
    not a failure of the run (a sweep stores nothing for it)."""


def _memory_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 2**34  # 16 GiB where the system does not say


def max_synthetic_size():
    """The most synthetic images that fit in half of this machine's RAM."""
    return _memory_bytes() // 2 // SYNTHETIC_BYTES


def check_fields(config):
    """Raises `ValueError` for a size no data set can use."""
    for name, limit in (
        ("batch_size", MAX_BATCH_SIZE),
        ("steps_per_execution", MAX_STEPS_PER_EXECUTION),
    ):
        value = getattr(config, name)
        if value is not None and value > limit:
            raise ValueError(
                f"`{name}` must be <= {limit:,}. Received: {name}={value}"
            )
    check_synthetic_size(config)


def check_synthetic_size(config):
    if config.synthetic_size is None:
        return
    if config.dataset != "synthetic":
        raise ValueError(
            "synthetic_size is for dataset='synthetic' only. Received: "
            f"synthetic_size={config.synthetic_size!r}, "
            f"dataset={config.dataset!r}"
        )
    if config.synthetic_size < 20:
        raise ValueError(
            "synthetic_size must be >= 20 (10 classes, each in training "
            "and validation). Received: synthetic_size="
            f"{config.synthetic_size}"
        )
    limit = max_synthetic_size()
    if config.synthetic_size > limit:
        raise ValueError(
            f"synthetic_size must be <= {limit:,} (half of this machine's "
            f"memory at {SYNTHETIC_BYTES} bytes an image). Received: "
            f"synthetic_size={config.synthetic_size}"
        )


def check_data(config, splits):
    """Raises `BadInputError` if the loaded data cannot serve `config`."""
    if config.batch_size > splits.num_train:
        raise BadInputError(
            f"batch_size={config.batch_size} exceeds the {splits.num_train} "
            f"training examples of {config.dataset!r}; valid: 1 to "
            f"{splits.num_train}"
        )
    if config.steps_per_execution > splits.steps_per_epoch:
        raise BadInputError(
            f"steps_per_execution={config.steps_per_execution} exceeds the "
            f"{splits.steps_per_epoch} steps of an epoch of "
            f"{config.dataset!r} at batch size {config.batch_size}; valid: "
            f"1 to {splits.steps_per_epoch}"
        )
