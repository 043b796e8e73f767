"""The model registry: names -> builder functions (as timm's registry)."""

import fnmatch

_MODELS = {}


def register_model(builder):
    """Registers `builder` under its function name; use as a decorator."""
    name = builder.__name__
    if name in _MODELS:
        raise ValueError(f"A model named {name!r} is already registered.")
    _MODELS[name] = builder
    return builder


def available(pattern="*"):
    """Sorted names of the registered models matching a shell `pattern`.

    Args:
        pattern: an `fnmatch` pattern, e.g. `"resnet*"`; `"*"` lists all.
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def build(name, **kwargs):
    """Builds the registered model `name` with the builder's `**kwargs`.

    Args:
        name: one of `available()`, e.g. `"resnet18"`.
        **kwargs: the builder's arguments: `num_classes`, `input_shape`,
            `bn_gamma`, `input_bn`, `activation_std`, `norm_layer`,
            `small_inputs` (see `models._common.build_classifier`).

    Returns:
        A `keras.Model` from channels-last images to logits.

    Raises:
        ValueError: for an unknown name (the message lists the valid
            ones) or an invalid argument.
    """
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {available()}. "
            f"Received: name={name!r}"
        )
    return _MODELS[name](**kwargs)
