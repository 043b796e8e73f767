"""The model registry: names -> builder functions (as timm's registry)."""

import fnmatch
import inspect

_MODELS = {}

# The arguments every builder takes (`models._common.build_classifier`).
COMMON_ARGS = (
    "num_classes",
    "input_shape",
    "bn_gamma",
    "input_bn",
    "activation_std",
    "norm_layer",
    "small_inputs",
    "moving_variance",
)


def _accepted(builder):
    """The keyword arguments `builder` takes: its own and `COMMON_ARGS`."""
    own = [
        p.name
        for p in inspect.signature(builder).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return [*COMMON_ARGS, *(n for n in own if n not in COMMON_ARGS)]


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
            `small_inputs`, `moving_variance` (see
            `models._common.build_classifier`).

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
    accepted = _accepted(_MODELS[name])
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(
            f"The model builder {name!r} does not take the argument "
            f"{unknown[0]!r}. Valid: {', '.join(accepted)}. Received: "
            f"{unknown[0]}={kwargs[unknown[0]]!r}"
        )
    return _MODELS[name](**kwargs)
