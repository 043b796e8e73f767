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

from models._common import build_classifier, positive_ints
from models._layers import conv_bn, conv_bn_act, max_pool
from models._registry import register_model

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
    if block not in BLOCKS:
        raise ValueError(
            f"`block` must be one of {list(BLOCKS)}. Received: block={block!r}"
        )
    layers = positive_ints("layers", layers)
    widths = positive_ints("widths", widths)
    for arg, value in (
        ("stem_width", stem_width),
        ("groups", groups),
        ("width_per_group", width_per_group),
    ):
        positive_ints(arg, value)
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


def _cifar_defaults(kwargs):
    """The CIFAR ResNets default to 10 classes and 32x32x3 inputs."""
    return {"num_classes": 10, "input_shape": (32, 32, 3), **kwargs}


def _register(name, summary, architecture, defaults=dict):
    """Registers `name` as a builder of `resnet(name, **architecture)`."""

    def builder(**kwargs):
        return resnet(name, **architecture, **defaults(kwargs))

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = summary + "\n\nArgs: see `models.resnet.resnet`.\n"
    globals()[name] = register_model(builder)


# The registered ResNets: name -> (architecture, trainable parameters of
# torchvision's model (7x7 stem) with 1000 classes, and of the small-input
# form (3x3 stem, no max-pool) with 10 classes). Each extra class adds
# (final channels + 1); `input_bn=True` adds one per input channel.
_BOTTLENECK_50 = {"block": "bottleneck", "layers": (3, 4, 6, 3)}
IMAGENET_RESNETS = {
    "resnet18": ({"block": "basic", "layers": (2, 2, 2, 2)}, 11_689_512),
    "resnet34": ({"block": "basic", "layers": (3, 4, 6, 3)}, 21_797_672),
    "resnet50": (_BOTTLENECK_50, 25_557_032),
    "resnet101": ({"block": "bottleneck", "layers": (3, 4, 23, 3)}, 44_549_160),
    "resnet152": ({"block": "bottleneck", "layers": (3, 8, 36, 3)}, 60_192_808),
    "resnext50_32x4d": (
        {**_BOTTLENECK_50, "groups": 32, "width_per_group": 4},
        25_028_904,
    ),
}
SMALL_INPUT_PARAMS = {
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "resnet101": 42_512_970,
    "resnet152": 58_156_618,
    "resnext50_32x4d": 22_992_714,
}
for _name, (_arch, _params) in IMAGENET_RESNETS.items():
    _register(
        _name,
        f"{_name}: {_arch}. Trainable parameters: {_params:,} with 1000 "
        f"classes (= torchvision `{_name}`); "
        f"{SMALL_INPUT_PARAMS[_name]:,} small-input with 10 classes.",
        _arch,
    )

# He et al.'s CIFAR ResNets: depth -> trainable parameters with 10 classes
# (the default). With option-A (zero-padding) shortcuts they would have
# 2,752 parameters fewer (the two projections: 16*32 + 2*32 and
# 32*64 + 2*64), e.g. the familiar 269,722 of ResNet-20.
CIFAR_RESNETS = {
    8: 78_042,
    20: 272_474,
    32: 466_906,
    44: 661_338,
    56: 855_770,
    110: 1_730_714,
}
for _depth, _params in CIFAR_RESNETS.items():
    _n = (_depth - 2) // 6
    _register(
        f"resnet{_depth}",
        f"CIFAR ResNet-{_depth} (n = {_n}): 3 stages of {_n} basic blocks, "
        f"widths 16/32/64, projection shortcuts. {_params:,} trainable "
        "parameters with 10 classes and 32x32x3 inputs (the defaults).",
        {
            "block": "basic",
            "layers": (_n,) * 3,
            "widths": (16, 32, 64),
            "stem_width": 16,
        },
        _cifar_defaults,
    )
