"""The paper's names for configuration fields, in what users read.

Code, configurations and the CLI flags say `gamma` and `gamma_lr_divisor`
(`--gamma`, `--gamma-lr-divisor`); tables, plots and printed labels say c
and a, as the paper does (Section 3.2: BN scales start at c and train at
the learning rate divided by a) and as run names do (`c0.1-a100`).
Machine-readable names (CSV columns, config keys, `--row-key`) stay the
field names.
"""

from keras_bninit.harness.config import format_value

# config field -> the paper's symbol
DISPLAY_NAMES = {"gamma": "c", "gamma_lr_divisor": "a"}


def display_name(field):
    """The name users read for a config field: "c" for "gamma", ..."""
    return DISPLAY_NAMES.get(field, field)


def named(field, value):
    """A field's value as users read it, e.g. `named("gamma", 0.1)` ->
    "c=0.1"."""
    return f"{display_name(field)}={format_value(value)}"
