"""The model registry: names -> builder functions (as timm's registry).

    from keras_bninit.models import create_model, list_models
    list_models("resnet*")
    model = create_model("resnet18", num_classes=10, input_shape=(32, 32, 3))
    backbone = create_model("resnet18", pretrained="resnet18.pth",
                            include_top=False, pooling="avg")

`build` and `available` are the older names of `create_model` (without
`pretrained`) and `list_models`.
"""

import fnmatch
import inspect

from ._pretrained import load_pretrained

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
    "include_top",
    "pooling",
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


def list_models(pattern="*"):
    """Sorted names of the registered models matching a shell `pattern`.

    Args:
        pattern: an `fnmatch` pattern, e.g. `"resnet*"`; `"*"` lists all.
    """
    if not isinstance(pattern, str):
        raise ValueError(
            "`pattern` must be a shell pattern string such as 'resnet*'. "
            f"Received: pattern={pattern!r}"
        )
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


available = list_models


def build(name, **kwargs):
    """Builds the registered model `name` with the builder's `**kwargs`.

    Args:
        name: one of `available()`, e.g. `"resnet18"`.
        **kwargs: the builder's arguments: `num_classes`, `input_shape`,
            `bn_gamma`, `input_bn`, `activation_std`, `norm_layer`,
            `small_inputs`, `moving_variance`, `include_top`, `pooling` (see
            `models._common.build_classifier`).

    Returns:
        A `keras.Model` from channels-last images to logits.

    Raises:
        ValueError: for an unknown name (the message lists the valid
            ones) or an invalid argument.
    """
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {list_models()}. "
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


def create_model(name, pretrained=None, **kwargs):
    """Builds the model `name`, with weights from a local file if given.

    As timm's `create_model`, with keras.applications' `include_top` and
    `pooling`.

    Args:
        name: one of `list_models()`, e.g. `"resnet18"`.
        pretrained: None (initial weights from the seed of
            `keras_bninit.set_seed`), or the path of a local `.keras` file,
            `.weights.h5` file, or PyTorch `state_dict` of the torchvision
            model of that name (`.pth`; ported through
            `torchvision_names`). Layers are matched by name; a classifier
            of another size (or none) keeps its initial weights, with a
            warning (see `models._pretrained`).
        **kwargs: the builder's arguments, as `build`: `num_classes`,
            `input_shape`, `bn_gamma`, `input_bn`, `include_top`,
            `pooling`, ...

    Returns:
        A `keras.Model` from channels-last images to logits, or to
        features with `include_top=False`.

    Raises:
        ValueError: an unknown name or argument, or a file that is missing
            or does not fit the model; the message names it.

    Example:

    ```python
    from keras_bninit.models import create_model

    features = create_model("resnet18", input_shape=(64, 64, 3),
                            include_top=False, pooling="avg")
    ```
    """
    model = build(name, **kwargs)
    if pretrained is not None:
        with_top = dict(kwargs, include_top=True, pooling=None)
        load_pretrained(model, pretrained, lambda: build(name, **with_top))
    return model
