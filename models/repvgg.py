"""RepVGG-A0 in its training-time form, and its fusion for inference.

A RepVGG block sums three branches and applies a ReLU: a 3x3 conv + BN
(`rbr_dense_conv`, `rbr_dense_bn`), a 1x1 conv + BN (`rbr_1x1_conv`,
`rbr_1x1_bn`) and, where input and output shapes agree, a BN of the input
alone (`rbr_identity`). Names follow the RepVGG paper's code with `_` for
its `.` (`models.torchvision_names` maps them back): blocks `stage0` (one
block) and `stage{1..4}_{j}`, then `gap` and `linear`.
A0 has width multipliers a = 0.75, b = 2.5 and (1, 2, 4, 14, 1) blocks, so
stage widths (48, 48, 96, 192, 1280); the first block of each stage has
stride 2.

Small inputs (Sections 4.1, 4.4): stages 0 and 1 have
stride 1, so a 32x32 input leaves a 4x4 map for the last stage.

`reparameterize(model)` turns the trained model into the inference form:
each block becomes one 3x3 conv with bias (`stage{i}_{j}_rbr_reparam`)
followed by its ReLU, giving the same outputs in inference mode.

Reference:
    Ding et al., "RepVGG: Making VGG-style ConvNets Great Again",
    CVPR 2021.
"""

import re

import keras
import numpy as np

import keras_bninit
from keras_bninit._validation import positive_ints

from ._common import build_classifier
from ._layers import conv, conv_bn
from ._registry import register_model

# Per stage: blocks, and the width as a function of (a, b) (RepVGG paper,
# Section 3.4): min(64, 64a), 64a, 128a, 256a, 512b.
STAGE_BLOCKS_A = (1, 2, 4, 14, 1)


def stage_widths(a, b):
    """The five stage widths of RepVGG with width multipliers a and b."""
    return (
        min(64, int(64 * a)),
        int(64 * a),
        int(128 * a),
        int(256 * a),
        int(512 * b),
    )


def _block_name(stage, index):
    return "stage0" if stage == 0 else f"stage{stage}_{index}"


def repvgg_block(x, norm, name, out_channels, stride, deploy=False):
    """One RepVGG block (training-time branches, or the fused 3x3 conv)."""
    if deploy:
        y = conv(
            x,
            out_channels,
            3,
            name=f"{name}_rbr_reparam",
            strides=stride,
            use_bias=True,
        )
    else:
        branches = [
            conv_bn(
                x,
                norm,
                out_channels,
                kernel,
                f"{name}_{branch}_conv",
                f"{name}_{branch}_bn",
                strides=stride,
            )
            for branch, kernel in (("rbr_dense", 3), ("rbr_1x1", 1))
        ]
        if stride == 1 and x.shape[-1] == out_channels:
            branches.append(norm(f"{name}_rbr_identity")(x))
        y = keras.layers.Add(name=f"{name}_add")(branches)
    return keras.layers.ReLU(name=f"{name}_nonlinearity")(y)


def repvgg(name, *, blocks, widths, deploy=False, **kwargs):
    """A RepVGG of any depth and width (the RepVGG paper's `RepVGG`).

    Args:
        name: the model's name.
        blocks: blocks per stage (stage 0 included), e.g. (1, 2, 4, 14, 1).
        widths: channels per stage, e.g. `stage_widths(0.75, 2.5)`.
        deploy: build the inference form (fused 3x3 convs with bias, no BN
            inside the blocks); `reparameterize` fills it from a trained
            training-time model.
        **kwargs: the common builder arguments (`num_classes`,
            `input_shape`, `bn_gamma`, `input_bn`, `activation_std`,
            `norm_layer`, `small_inputs`, `moving_variance`), see
            `models._common.build_classifier`.

    Returns:
        A `keras.Model` from (H, W, C) images to `num_classes` logits.
    """
    blocks = positive_ints("blocks", blocks)
    widths = positive_ints("widths", widths)
    if len(blocks) != len(widths):
        raise ValueError(
            "`blocks` and `widths` must have one entry per stage. "
            f"Received: blocks={blocks!r}, widths={widths!r}"
        )

    def strides(small):
        # Section 4.1: stages 0 and 1 keep the resolution for small inputs.
        return [1 if small and i < 2 else 2 for i in range(len(blocks))]

    def features(x, norm, small):
        for stage, (n, width, stride) in enumerate(
            zip(blocks, widths, strides(small))
        ):
            for i in range(n):
                x = repvgg_block(
                    x,
                    norm,
                    _block_name(stage, i),
                    width,
                    stride if i == 0 else 1,
                    deploy,
                )
        return x

    return build_classifier(
        name,
        features,
        lambda small: int(np.prod(strides(small))),
        pool_name="gap",
        fc_name="linear",
        **kwargs,
    )


@register_model
def repvgg_a0(deploy=False, **kwargs):
    """RepVGG-A0 (a = 0.75, b = 2.5, blocks 1, 2, 4, 14, 1).

    Trainable parameters, training-time form: 9,108,968 with 1000 classes
    (224x224); 7,840,874 small-input with 10 classes (stage 1's first
    block then has stride 1 and so an identity BN: 96 more than the
    7,840,778 of the 224x224 form with 10 classes). Inference form
    (`deploy=True` or `reparameterize`): 8,309,384 with 1000 classes (the
    paper's 8.30M), 7,041,194 with 10, at any input size. Each class adds
    1281; `input_bn=True` adds one per input channel.

    Args:
        deploy: build the fused inference form directly.
        **kwargs: the common builder arguments, see `repvgg`.
    """
    return repvgg(
        "repvgg_a0",
        blocks=STAGE_BLOCKS_A,
        widths=stage_widths(0.75, 2.5),
        deploy=deploy,
        **kwargs,
    )


# ---------------------------------------------------------------------------
# Structural re-parameterization (RepVGG paper, Section 3.3)
# ---------------------------------------------------------------------------

_DENSE_CONV = re.compile(r"^stage(\d+)(?:_(\d+))?_rbr_dense_conv$")


def _float64(variable):
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def _bn_scale_shift(layer):
    """A BN in inference mode as y = scale * x + shift (float64)."""
    if type(layer) not in (
        keras.layers.BatchNormalization,
        keras_bninit.BatchNormalization,
    ):
        raise ValueError(
            "reparameterize fuses only `keras.layers.BatchNormalization` "
            "and `keras_bninit.BatchNormalization` (affine maps in inference "
            "mode). "
            f"Received: layer {layer.name!r} of type {type(layer).__name__}"
        )
    mean = _float64(layer.moving_mean)
    var = _float64(layer.moving_variance)
    gamma = _float64(layer.gamma) if layer.scale else 1.0
    beta = _float64(layer.beta) if layer.center else 0.0
    scale = gamma / np.sqrt(var + layer.epsilon)
    return scale, beta - mean * scale


def _fuse_block(model, name):
    """The 3x3 kernel and bias equal to the block's branches (inference)."""
    kernel, bias = 0.0, 0.0
    for branch, pad in (("rbr_dense", 0), ("rbr_1x1", 1)):
        k = _float64(model.get_layer(f"{name}_{branch}_conv").kernel)
        scale, shift = _bn_scale_shift(model.get_layer(f"{name}_{branch}_bn"))
        k = np.pad(k, ((pad, pad), (pad, pad), (0, 0), (0, 0)))
        kernel = kernel + k * scale
        bias = bias + shift
    names = {layer.name for layer in model.layers}
    if f"{name}_rbr_identity" in names:
        scale, shift = _bn_scale_shift(model.get_layer(f"{name}_rbr_identity"))
        channels = len(shift)
        identity = np.zeros((3, 3, channels, channels))
        identity[1, 1, np.arange(channels), np.arange(channels)] = 1.0
        kernel = kernel + identity * scale
        bias = bias + shift
    return kernel, bias


def _architecture(model):
    """(blocks, widths, small_inputs) of a training-time RepVGG model."""
    stages = {}
    for layer in model.layers:
        match = _DENSE_CONV.match(layer.name)
        if match:
            stage, index = int(match[1]), int(match[2] or 0)
            stages.setdefault(stage, {})[index] = layer
    if not stages or sorted(stages) != list(range(len(stages))):
        raise ValueError(
            "reparameterize expects a training-time RepVGG built by "
            "`models.repvgg` (layers `stage{i}_{j}_rbr_dense_conv`). "
            f"Received: model {model.name!r}"
        )
    blocks = tuple(len(stages[s]) for s in sorted(stages))
    widths = tuple(stages[s][0].filters for s in sorted(stages))
    small = stages[0][0].strides == (1, 1)
    return blocks, widths, small


def reparameterize(model):
    """Fuses a training-time RepVGG into its inference form.

    Each block's 3x3 conv + BN, 1x1 conv + BN and identity BN become one
    3x3 convolution with bias: a BN in inference mode is the affine map
    gamma * (x - mean) / sqrt(var + eps) + beta, which folds into the
    preceding conv's kernel and bias; the 1x1 kernel is zero-padded to
    3x3 and the identity is a 3x3 kernel with a 1 at the centre of each
    channel's own filter. Other layers (input BN, classifier) are copied.
    The result gives the training-time model's inference-mode outputs (up
    to float32 rounding), has fewer parameters, and exports as a
    SavedModel (`fused.export(path)`).

    Args:
        model: a training-time RepVGG from `repvgg` / `repvgg_a0` whose
            block norms are `keras.layers.BatchNormalization` (the default
            `keras_bninit.batch_norm`, either moving variance); formulations
            that are not affine in inference mode cannot be fused and raise
            `ValueError`.

    Returns:
        A new `keras.Model` (same name, inputs and outputs); `model` is
        left unchanged.
    """
    blocks, widths, small = _architecture(model)
    names = {layer.name for layer in model.layers}
    input_bn = "input_bn" in names
    fused = repvgg(
        model.name,
        blocks=blocks,
        widths=widths,
        deploy=True,
        num_classes=model.get_layer("linear").units,
        input_shape=tuple(model.inputs[0].shape[1:]),
        input_bn=input_bn,
        small_inputs=small,
        moving_variance=getattr(
            model.get_layer("input_bn") if input_bn else None,
            "moving_variance_convention",
            "biased",
        ),
    )
    for layer in fused.layers:
        if layer.name.endswith("_rbr_reparam"):
            kernel, bias = _fuse_block(
                model, layer.name[: -len("_rbr_reparam")]
            )
            layer.set_weights(
                [kernel.astype(np.float32), bias.astype(np.float32)]
            )
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return fused
