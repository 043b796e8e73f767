"""ResNet, ResNeXt and the CIFAR ResNets from one residual-stage builder.

Layer for layer torchvision's `ResNet` (v1.5: the stride of a bottleneck
block sits on its 3x3 conv) with torchvision's module names, `_` for `.`
(`conv1`, `bn1`, `layer2_0_conv1`, `layer2_0_bn1`, `layer2_0_downsample_0`,
`fc`, ...; `models.torchvision_names` maps the weights to torchvision's
`state_dict` keys), so
the trainable-parameter counts equal torchvision's for the same number of
classes. Convolutions have no bias; each residual branch ends in a BN
whose output is added to the shortcut and then activated (torchvision's
default `zero_init_residual=False`: every BN scale starts at c).

Small inputs (Section 4.1): the first conv is 3x3 with stride 1 and there
is no max-pool. The CIFAR ResNets of He et al. (2016, Section 4.2) are the
same stages with widths 16/32/64, n basic blocks each (depth 6n + 2) and
projection shortcuts (1x1 conv + BN) where the shape changes.

Reference:
    He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
    CVPR 2016. Xie et al., "Aggregated Residual Transformations for Deep
    Neural Networks" (ResNeXt), CVPR 2017.
"""

import keras

from keras_bninit._validation import choice, positive_int, positive_ints

from ._common import build_classifier
from ._layers import conv_bn, conv_bn_act, max_pool
from ._registry import register_model

BLOCKS = ("basic", "bottleneck")


def _block_convs(block, planes, stride, groups, width_per_group):
    """The block's residual branch as data: [(filters, kernel, stride,
    groups), ...], and its output channels."""
    if block == "basic":
        return [(planes, 3, stride, 1), (planes, 3, 1, 1)], planes
    width = int(planes * (width_per_group / 64.0)) * groups
    convs = [
        (width, 1, 1, 1),
        (width, 3, stride, groups),
        (planes * 4, 1, 1, 1),
    ]
    return convs, planes * 4


def residual_block(x, norm, name, convs, out_channels, stride):
    """One residual block: conv-BN-ReLU ... conv-BN, + shortcut, ReLU.

    Args:
        x: input tensor.
        norm: the network's `Norm`.
        name: the block's name prefix, e.g. `"layer2_0"`.
        convs: the branch as [(filters, kernel, stride, groups), ...]; the
            layers are `{name}_conv{i}` / `{name}_bn{i}` / `{name}_relu{i}`.
        out_channels: the block's output channels.
        stride: the block's stride; with a change of shape the shortcut is
            a projection `{name}_downsample_0` (1x1 conv) and
            `{name}_downsample_1` (BN), else the identity.
    """
    shortcut = x
    for i, (filters, kernel, conv_stride, groups) in enumerate(convs, 1):
        x = conv_bn_act(
            x,
            norm,
            filters,
            kernel,
            (f"{name}_conv{i}", f"{name}_bn{i}", f"{name}_relu{i}"),
            act="relu" if i < len(convs) else None,
            strides=conv_stride,
            groups=groups,
        )
    if stride != 1 or shortcut.shape[-1] != out_channels:
        shortcut = conv_bn(
            shortcut,
            norm,
            out_channels,
            1,
            f"{name}_downsample_0",
            f"{name}_downsample_1",
            strides=stride,
        )
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def residual_stage(
    x, norm, name, *, block, planes, blocks, stride, groups, width_per_group
):
    """`blocks` residual blocks; the first has `stride` (torchvision's
    `_make_layer`), named `{name}_0`, `{name}_1`, ..."""
    for i in range(blocks):
        block_stride = stride if i == 0 else 1
        convs, out_channels = _block_convs(
            block, planes, block_stride, groups, width_per_group
        )
        x = residual_block(
            x, norm, f"{name}_{i}", convs, out_channels, block_stride
        )
    return x


def resnet(
    name="resnet",
    *,
    block,
    layers,
    widths=(64, 128, 256, 512),
    stem_width=64,
    groups=1,
    width_per_group=64,
    **kwargs,
):
    """A ResNet/ResNeXt of any depth and width (torchvision's `ResNet`).

    Args:
        name: the model's name.
        block: `"basic"` (two 3x3 convs) or `"bottleneck"` (1x1, 3x3, 1x1
            with expansion 4).
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18. Stage i
            is named `layer{i+1}`; the first stage has stride 1, the others
            stride 2.
        widths: each stage's `planes` (a bottleneck outputs 4x as many).
        stem_width: channels of the first conv (`conv1`).
        groups: groups of the bottleneck's 3x3 conv (ResNeXt cardinality).
        width_per_group: bottleneck width per group; the 3x3 conv has
            `int(planes * width_per_group / 64) * groups` channels.
        **kwargs: the common builder arguments (`num_classes`,
            `input_shape`, `bn_gamma`, `input_bn`, `activation_std`,
            `norm_layer`, `small_inputs`, `moving_variance`), see
            `models._common.build_classifier`.

    Returns:
        A `keras.Model` from (H, W, C) images to `num_classes` logits.
    """
    choice("block", block, BLOCKS)
    layers = positive_ints("layers", layers)
    widths = positive_ints("widths", widths)
    stem_width = positive_int("stem_width", stem_width)
    groups = positive_int("groups", groups)
    width_per_group = positive_int("width_per_group", width_per_group)
    if len(widths) != len(layers):
        raise ValueError(
            "`widths` and `layers` must have one entry per stage. "
            f"Received: layers={layers!r}, widths={widths!r}"
        )

    def features(x, norm, small):
        if small:  # Section 4.1: 3x3 stride 1 padding 1, no max-pool
            x = conv_bn_act(x, norm, stem_width, 3, ("conv1", "bn1", "relu"))
        else:
            x = conv_bn_act(
                x, norm, stem_width, 7, ("conv1", "bn1", "relu"), strides=2
            )
            x = max_pool(x, "maxpool")
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            x = residual_stage(
                x,
                norm,
                f"layer{i + 1}",
                block=block,
                planes=planes,
                blocks=blocks,
                stride=1 if i == 0 else 2,
                groups=groups,
                width_per_group=width_per_group,
            )
        return x

    body_stride = 2 ** (len(layers) - 1)
    return build_classifier(
        name,
        features,
        lambda small: body_stride if small else 4 * body_stride,
        **kwargs,
    )


# ---------------------------------------------------------------------------
# The registered ResNets. Trainable parameters: torchvision's model (7x7
# stem) with 1000 classes, and the small-input form (3x3 stem, no max-pool,
# Section 4.1) with 10 classes; each extra class adds (final channels + 1)
# and `input_bn=True` one per input channel. Arguments: those of
# `models._common.build_classifier`.
# ---------------------------------------------------------------------------

_BOTTLENECK_50 = {"block": "bottleneck", "layers": (3, 4, 6, 3)}


@register_model
def resnet18(**kwargs):
    """ResNet-18 (He et al. 2016), the paper's CIFAR-10 model (in its
    small-input form, Section 4.1): 11,689,512 parameters (= torchvision);
    11,173,962 small-input."""
    return resnet("resnet18", block="basic", layers=(2, 2, 2, 2), **kwargs)


@register_model
def resnet34(**kwargs):
    """ResNet-34 (He et al. 2016): 21,797,672 parameters (= torchvision);
    21,282,122 small-input."""
    return resnet("resnet34", block="basic", layers=(3, 4, 6, 3), **kwargs)


@register_model
def resnet50(**kwargs):
    """ResNet-50 (He et al. 2016), bottleneck blocks: 25,557,032
    parameters (= torchvision); 23,520,842 small-input."""
    return resnet("resnet50", **_BOTTLENECK_50, **kwargs)


@register_model
def resnet101(**kwargs):
    """ResNet-101 (He et al. 2016): 44,549,160 parameters (= torchvision);
    42,512,970 small-input."""
    return resnet(
        "resnet101", block="bottleneck", layers=(3, 4, 23, 3), **kwargs
    )


@register_model
def resnet152(**kwargs):
    """ResNet-152 (He et al. 2016): 60,192,808 parameters (= torchvision);
    58,156,618 small-input."""
    return resnet(
        "resnet152", block="bottleneck", layers=(3, 8, 36, 3), **kwargs
    )


@register_model
def resnext50_32x4d(**kwargs):
    """ResNeXt-50 32x4d (Xie et al. 2017): ResNet-50 with 32 groups of
    width 4; 25,028,904 parameters (= torchvision); 22,992,714
    small-input."""
    return resnet(
        "resnext50_32x4d",
        **_BOTTLENECK_50,
        groups=32,
        width_per_group=4,
        **kwargs,
    )


# He et al.'s CIFAR ResNets (2016, Section 4.2): depth 6n + 2, three stages
# of n basic blocks, widths 16/32/64, projection shortcuts; 10 classes and
# 32x32x3 inputs by default. With option-A (zero-padding) shortcuts they
# would have 2,752 parameters fewer (the two projections: 16*32 + 2*32 and
# 32*64 + 2*64), e.g. the familiar 269,722 of ResNet-20.


def _cifar_resnet(depth, num_classes=10, input_shape=(32, 32, 3), **kwargs):
    """The CIFAR ResNet of `depth` layers (n = (depth - 2) / 6)."""
    return resnet(
        f"resnet{depth}",
        block="basic",
        layers=((depth - 2) // 6,) * 3,
        widths=(16, 32, 64),
        stem_width=16,
        num_classes=num_classes,
        input_shape=input_shape,
        **kwargs,
    )


@register_model
def resnet8(**kwargs):
    """CIFAR ResNet-8 (n = 1): 78,042 parameters."""
    return _cifar_resnet(8, **kwargs)


@register_model
def resnet20(**kwargs):
    """CIFAR ResNet-20 (n = 3): 272,474 parameters."""
    return _cifar_resnet(20, **kwargs)


@register_model
def resnet32(**kwargs):
    """CIFAR ResNet-32 (n = 5): 466,906 parameters."""
    return _cifar_resnet(32, **kwargs)


@register_model
def resnet44(**kwargs):
    """CIFAR ResNet-44 (n = 7): 661,338 parameters."""
    return _cifar_resnet(44, **kwargs)


@register_model
def resnet56(**kwargs):
    """CIFAR ResNet-56 (n = 9): 855,770 parameters."""
    return _cifar_resnet(56, **kwargs)


@register_model
def resnet110(**kwargs):
    """CIFAR ResNet-110 (n = 18): 1,730,714 parameters."""
    return _cifar_resnet(110, **kwargs)
