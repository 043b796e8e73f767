"""Keras weight paths <-> torchvision `state_dict` keys, and weight porting.

Layer names follow torchvision's module names (the RepVGG paper's code for
RepVGG) with `_` in place of `.`, since PyTorch-backed Keras (and
`torch.nn.Module`) refuses `.` in a parameter name: torchvision's
`layer2.0.downsample.1` is the Keras layer `layer2_0_downsample_1`, as in
KerasHub. The rule back is to replace every `_` by `.` except inside the
RepVGG branch names `rbr_dense`, `rbr_1x1`, `rbr_identity` and
`rbr_reparam`; no other torchvision module name of the zoo has a `_`.

Variables map as PyTorch names them: a convolution's or dense layer's
`kernel` is `weight` (in PyTorch's layout, see `to_torch_layout`), `bias`
is `bias`; a BN's `gamma`, `beta`,
`moving_mean`, `moving_variance` are `weight`, `bias`, `running_mean`,
`running_var` (PyTorch's `num_batches_tracked` has no Keras counterpart).
Layers torchvision does not have (`input_bn`, the method's input BN) and
variables a BN formulation adds (e.g. A2's `rho`) are left out.

    models.torchvision_names(model)  # {"conv1/kernel": "conv1.weight", ...}
    models.load_torch_state_dict(model, torch_model.state_dict())
"""

import keras
import numpy as np

from keras_bninit import InputBatchNorm

# Parts of the RepVGG paper's module names that contain `_`.
_COMPOUND = ("rbr_dense", "rbr_1x1", "rbr_identity", "rbr_reparam")

_CONV_VARIABLES = {"kernel": "weight", "bias": "bias"}
_BN_VARIABLES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def torch_module_name(layer_name):
    """torchvision's module name of a Keras layer of the zoo.

    `"layer2_0_downsample_1"` -> `"layer2.0.downsample.1"`,
    `"stage1_0_rbr_dense_conv"` -> `"stage1.0.rbr_dense.conv"`.
    """
    protected = layer_name
    for i, part in enumerate(_COMPOUND):
        protected = protected.replace(part, f"\0{i}\0")
    name = protected.replace("_", ".")
    for i, part in enumerate(_COMPOUND):
        name = name.replace(f"\0{i}\0", part)
    return name


def keras_layer_name(module_name):
    """The Keras layer name of a torchvision module name (`.` -> `_`)."""
    return module_name.replace(".", "_")


def _variable_names(layer):
    """{Keras variable name: PyTorch parameter name} for a layer type."""
    # InputBatchNorm subclasses BatchNormalization; torchvision has none.
    if isinstance(layer, InputBatchNorm):
        return {}
    if isinstance(
        layer,
        (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense),
    ):
        return _CONV_VARIABLES
    if isinstance(layer, keras.layers.BatchNormalization):
        return _BN_VARIABLES
    return {}


def _mapped_variables(model):
    """(layer, variable, torch key) for every variable with a torchvision
    twin."""
    triples = []
    for layer in model.layers:
        names = _variable_names(layer)
        module = torch_module_name(layer.name)
        for variable in layer.weights:
            short = variable.path.split("/")[-1]
            if short in names:
                triples.append((layer, variable, f"{module}.{names[short]}"))
    return triples


def torchvision_names(model):
    """{Keras weight path: torchvision `state_dict` key} of a zoo model.

    E.g. `"layer2_0_downsample_1/moving_variance"` ->
    `"layer2.0.downsample.1.running_var"`. Covers every weight of the
    torchvision (RepVGG: the RepVGG paper's) model except
    `num_batches_tracked`; the input BN and variables that only a BN
    formulation has are left out.

    Args:
        model: a model built by `models.build` (or reloaded from `.keras`).

    Returns:
        A dict in the model's weight order.
    """
    return {v.path: key for _, v, key in _mapped_variables(model)}


def keras_names(model):
    """The inverse of `torchvision_names`: {torch key: Keras weight path}."""
    return {key: path for path, key in torchvision_names(model).items()}


def _is_kernel(layer, variable):
    return variable.path.split("/")[-1] == "kernel"


# Axis permutations of kernels, Keras layout -> PyTorch layout: depthwise
# (kh, kw, C, 1) -> (C, 1, kh, kw), conv (kh, kw, in, out) -> (out, in, kh,
# kw), dense (in, out) -> (out, in).
_TO_TORCH = (
    (keras.layers.DepthwiseConv2D, (2, 3, 0, 1)),
    (keras.layers.Conv2D, (3, 2, 0, 1)),
    (keras.layers.Dense, (1, 0)),
)


def _permutation(layer, variable, inverse):
    if _is_kernel(layer, variable):
        for kind, axes in _TO_TORCH:
            if isinstance(layer, kind):
                return tuple(np.argsort(axes)) if inverse else axes
    return None


def to_torch_layout(layer, variable, array):
    """A Keras weight of `layer` as PyTorch stores it.

    Convolution kernels (kh, kw, in, out) -> (out, in, kh, kw); depthwise
    kernels (kh, kw, C, 1) -> (C, 1, kh, kw); dense kernels (in, out) ->
    (out, in); everything else unchanged.
    """
    axes = _permutation(layer, variable, inverse=False)
    array = np.asarray(array)
    return array if axes is None else array.transpose(axes)


def from_torch_layout(layer, variable, array):
    """The inverse of `to_torch_layout`: a PyTorch tensor as Keras's."""
    axes = _permutation(layer, variable, inverse=True)
    array = np.asarray(array)
    return array if axes is None else array.transpose(axes)


def torch_state_dict(model):
    """The model's weights as a torchvision-style {key: NumPy array}."""
    return {
        key: to_torch_layout(layer, v, keras.ops.convert_to_numpy(v))
        for layer, v, key in _mapped_variables(model)
    }


def load_torch_state_dict(model, state_dict):
    """Loads torchvision weights (e.g. `tv_model.state_dict()`) into `model`.

    Args:
        model: a zoo model of the same architecture and class count.
        state_dict: {torch key: tensor or array}; torch tensors are read
            with `.numpy()` after `.detach().cpu()`. Keys without a Keras
            counterpart (`num_batches_tracked`) are ignored.

    Raises:
        ValueError: naming the keys the model needs that `state_dict`
            lacks, or a key whose shape differs.
    """
    triples = _mapped_variables(model)
    missing = [key for _, _, key in triples if key not in state_dict]
    if missing:
        raise ValueError(
            f"`state_dict` lacks {len(missing)} keys the model needs, e.g. "
            f"{missing[:3]}. Received keys: {sorted(state_dict)[:5]}..."
        )
    values = []
    for layer, variable, key in triples:
        value = state_dict[key]
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        value = np.asarray(value)
        expected = to_torch_layout(layer, variable, np.empty(variable.shape))
        if value.shape != expected.shape:
            raise ValueError(
                f"Shape mismatch for {key!r}: the model's {variable.path!r} "
                f"needs PyTorch shape {expected.shape}; received "
                f"{value.shape}."
            )
        values.append(from_torch_layout(layer, variable, value))
    # Assign only once every key was checked: all or nothing.
    for (_, variable, _), value in zip(triples, values):
        variable.assign(value.astype(variable.dtype))
