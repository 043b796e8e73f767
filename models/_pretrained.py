"""Weights for a zoo model from a local file (`create_model(pretrained=)`).

Three kinds of file, told apart by their name:

- `.keras`: a saved zoo model (`model.save`, or a run's `model.keras`).
- `.weights.h5`: Keras weights (`model.save_weights`); they hold no
  architecture, so the model is first built as the file was saved, with
  its classifier, then copied over.
- anything else (`.pth`, `.pt`, `.bin`): a PyTorch `state_dict` of the
  torchvision (or RepVGG paper) model of the same name, ported through the
  layer-name mapping of `models._torch_names`. A checkpoint that wraps it
  (`{"state_dict": ...}` or `{"model": ...}`) and DataParallel's `module.`
  prefixes are unwrapped.

Weights are matched by layer name. Every layer of the model's body must be
in the file with the same shapes, and the file may hold no body layer the
model lacks (both would mean another architecture): the error names the
first such layer. The classifier (the dense layers) is the exception, as in
timm: with another `num_classes`, or none (`include_top=False`), it keeps
its initial weights and a warning says so. Nothing is assigned unless every
layer fits.
"""

import os
import warnings

import h5py
import keras
import numpy as np

from keras_bninit.saving import load_model, read_hdf5_whole

from ._torch_names import (
    _mapped_variables,
    from_torch_layout,
    keras_layer_name,
    to_torch_layout,
)

# Wrappers of a state_dict in training checkpoints.
_CHECKPOINT_KEYS = ("state_dict", "model")


def _is_head(layer):
    return isinstance(layer, keras.layers.Dense)


def _layer_weights(model):
    """{layer name: [arrays]} and the names of the classifier's layers."""
    weights = {
        layer.name: [keras.ops.convert_to_numpy(w) for w in layer.weights]
        for layer in model.layers
        if layer.weights
    }
    heads = {layer.name for layer in model.layers if _is_head(layer)}
    return weights, heads


def _read_torch(path):
    try:
        import torch
    except ImportError as error:
        raise ValueError(
            f"Reading the PyTorch state_dict {path!r} needs PyTorch "
            "(pip install torch); Keras files end in .keras or .weights.h5."
        ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike
        raise ValueError(
            f"Cannot read {path!r} as a PyTorch state_dict: "
            f"{_torch_reason(error)}. Valid files: .keras, .weights.h5, or "
            "a torch.save'd state_dict of tensors."
        ) from error
    for key in _CHECKPOINT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(
        hasattr(v, "shape") for v in state.values()
    ):
        raise ValueError(
            f"{path!r} holds no state_dict ({{name: tensor}}); received a "
            f"{type(state).__name__}."
        )
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return {
        k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }


def _torch_weights(model, state):
    """The state_dict as `_layer_weights` gives a model's: the model's
    layers in Keras layout (variables torchvision lacks, such as A2's
    `rho`, keep the model's values; layers it lacks, `input_bn`, are left
    out), the file's other modules by name, and its linear (2-D weight)
    modules as the classifier."""
    weights = {}
    for layer, variable, key in _mapped_variables(model):
        if layer.name not in weights:
            weights[layer.name] = [
                keras.ops.convert_to_numpy(w) for w in layer.weights
            ]
        if key in state:
            expected = to_torch_layout(
                layer, variable, np.empty(variable.shape)
            )
            value = state[key]
            if value.shape == expected.shape:
                value = from_torch_layout(layer, variable, value)
            index = [id(w) for w in layer.weights].index(id(variable))
            weights[layer.name][index] = value
        else:
            weights[layer.name] = None  # the file lacks it
    weights = {name: w for name, w in weights.items() if w is not None}
    modules = {key.rsplit(".", 1)[0] for key in state}
    for module in modules:
        weights.setdefault(keras_layer_name(module), [])
    heads = {
        keras_layer_name(key.rsplit(".", 1)[0])
        for key, value in state.items()
        if key.endswith(".weight") and value.ndim == 2
    }
    return weights, heads


def _torch_reason(error):
    """Why torch refused a file, in one line of our words: its own message
    runs over several lines and advises `weights_only=False`, which would
    run the file's code."""
    text = " ".join(str(error).split())
    if "Weights only load failed" in text or "weights_only" in text:
        return (
            "it names objects other than tensors and plain containers, "
            "which are not unpickled (no code from a file is run)"
        )
    return f"{type(error).__name__}: {text[:200]}"


def _check_hdf5(path):
    """Raises one `ValueError` if `path` is not a whole HDF5 file."""
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"Cannot read {path!r}: it is not an HDF5 .weights.h5 file "
            "(damaged, truncated or another format)"
        )
    try:
        read_hdf5_whole(path)
    except Exception as error:  # h5py's RuntimeError, KeyError, OSError
        text = " ".join(str(error).split())[:200]
        raise ValueError(
            f"Cannot read {path!r}: it is damaged or truncated "
            f"({type(error).__name__}: {text})"
        ) from error


def _weights_h5(path, rebuild):
    if rebuild is None:
        raise ValueError(
            f"A .weights.h5 file holds no architecture; load {path!r} "
            "through create_model(name, pretrained=path, ...)."
        )
    _check_hdf5(path)
    twin = rebuild()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            twin.load_weights(path)
            # Keras loads what it can and warns about the rest ("Skipping
            # ...", "... retain their freshly-initialized weights").
            problem = next(
                (w.message for w in caught if w.category is UserWarning),
                None,
            )
        except (ValueError, OSError, KeyError) as error:
            problem = error
        except RuntimeError as error:  # h5py: damage its check did not see
            raise ValueError(
                f"Cannot read {path!r}: it is damaged or truncated "
                f"(RuntimeError: {' '.join(str(error).split())[:200]})"
            ) from error
    if problem is not None:
        reason = " ".join(str(problem).split())[:300]
        raise ValueError(
            f"{path!r} does not fit {twin.name} built with these arguments "
            "(a .weights.h5 file holds no architecture: build with the "
            "num_classes, input_bn, ... it was saved with, or load a .keras "
            f"file to change the classifier). Keras says: {reason}"
        )
    return _layer_weights(twin)


def load_pretrained(model, path, rebuild=None):
    """Assigns the weights of the file `path` to the zoo model `model`.

    Args:
        model: a model of `keras_bninit.models`.
        path: a local `.keras`, `.weights.h5` or PyTorch state_dict file.
        rebuild: for `.weights.h5`, a callable returning the model as the
            file was saved (with its classifier); `create_model` passes it.

    Raises:
        ValueError: the file is missing or unreadable, or its layers do not
            fit the model; one message that names the file and the layer.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            "`pretrained` must be a path to a local .keras, .weights.h5 or "
            f"PyTorch state_dict file, or None. Received: pretrained={path!r}"
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"The pretrained weights file {path!r} does not exist."
        )
    if path.endswith(".keras"):
        source, heads = _layer_weights(load_model(path, compile=False))
    elif path.endswith(".weights.h5"):
        source, heads = _weights_h5(path, rebuild)
    else:
        source, heads = _torch_weights(model, _read_torch(path))
    _assign(model, source, heads, path)


def _assign(model, source, source_heads, path):
    """Matches `source` ({layer name: [arrays]}) to `model` by layer name."""
    targets = [layer for layer in model.layers if layer.weights]
    names = {layer.name for layer in targets}
    extra = sorted(
        n for n in source if n not in names and n not in source_heads
    )
    if extra:
        raise ValueError(
            f"{path!r} holds layers {model.name} does not have, e.g. "
            f"{extra[:3]}: it is another architecture (or other arguments)."
        )
    values, skipped = [], []
    for layer in targets:
        arrays = source.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        fits = arrays is not None and shapes == [a.shape for a in arrays]
        if fits:
            values.append((layer, arrays))
        elif _is_head(layer):
            skipped.append(layer.name)
        elif layer.name == "input_bn" and arrays is None:
            continue  # the method's input BN, new to these weights
        else:
            received = None if arrays is None else [a.shape for a in arrays]
            raise ValueError(
                f"{path!r} does not fit {model.name}: layer {layer.name!r} "
                f"needs weights of shapes {shapes}; the file has "
                f"{'none' if received is None else received}."
            )
    if skipped:
        warnings.warn(
            f"{model.name}: the classifier {skipped} keeps its initial "
            f"weights ({path!r} has another number of classes or none).",
            stacklevel=3,
        )
    for layer, arrays in values:
        layer.set_weights(arrays)
