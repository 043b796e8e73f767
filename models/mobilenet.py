"""MobileNetV2 (width 1.0), layer for layer torchvision's `mobilenet_v2`.

Names follow torchvision's modules, `_` for `.` (`models.torchvision_names`
maps the weights to torchvision's `state_dict` keys): `features_0_0` (conv),
`features_0_1` (BN), `features_0_2` (ReLU6); inverted residual blocks
`features_1` ... `features_17` with `features_{i}_conv_0_0` (1x1 expansion
conv), `_conv_0_1` (BN), `_conv_1_0` (3x3 depthwise conv), `_conv_1_1` (BN),
`_conv_2` (1x1 linear projection), `_conv_3` (BN) (blocks without expansion
start at the depthwise conv); `features_18` (1x1 conv to 1280 channels);
`classifier_0` (dropout 0.2) and `classifier_1` (dense).

Small inputs (Sections 4.1, 4.4): the first conv and
the second and third bottleneck stages (24 and 32 channels, torchvision's
`inverted_residual_setting` rows 2 and 3) have stride 1, so a 32x32 input
leaves an 8x8 map for the last stages.

Reference:
    Sandler et al., "MobileNetV2: Inverted Residuals and Linear
    Bottlenecks", CVPR 2018.
"""

import keras

from ._common import build_classifier
from ._layers import conv_bn, conv_bn_act
from ._registry import register_model

# (expansion t, output channels c, blocks n, stride s) per stage, as
# torchvision's `inverted_residual_setting` for width 1.0.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Stages whose stride becomes 1 for small inputs (the second and third).
SMALL_INPUT_STRIDE_ONE = (1, 2)
STEM_WIDTH = 32
LAST_CHANNEL = 1280


def _names(prefix):
    """torchvision's `Conv2dNormActivation` children: conv, norm, act."""
    return (f"{prefix}_0", f"{prefix}_1", f"{prefix}_2")


def inverted_residual(x, norm, name, out_channels, stride, expansion):
    """torchvision's `InvertedResidual`: [1x1 expand] -> 3x3 depthwise ->
    1x1 linear projection, + input when the shape is kept."""
    in_channels = x.shape[-1]
    hidden = int(round(in_channels * expansion))
    y = x
    index = 0
    if expansion != 1:
        y = conv_bn_act(
            y, norm, hidden, 1, _names(f"{name}_conv_0"), act="relu6"
        )
        index = 1
    y = conv_bn_act(
        y,
        norm,
        hidden,
        3,
        _names(f"{name}_conv_{index}"),
        act="relu6",
        strides=stride,
        depthwise=True,
    )
    y = conv_bn(
        y,
        norm,
        out_channels,
        1,
        f"{name}_conv_{index + 1}",
        f"{name}_conv_{index + 2}",
    )
    if stride == 1 and in_channels == out_channels:
        y = keras.layers.Add(name=f"{name}_add")([x, y])
    return y


def _stage_strides(small):
    return [
        1 if small and i in SMALL_INPUT_STRIDE_ONE else s
        for i, (_, _, _, s) in enumerate(INVERTED_RESIDUAL_SETTING)
    ]


@register_model
def mobilenet_v2(**kwargs):
    """MobileNetV2 with width multiplier 1.0 (torchvision `mobilenet_v2`).

    Trainable parameters: 3,504,872 with 1000 classes (= torchvision);
    2,236,682 with 10 classes (each class adds 1281; the small-input
    variant changes only strides, not the count); `input_bn=True` adds one
    per input channel.

    Args:
        **kwargs: the common builder arguments (`num_classes`,
            `input_shape`, `bn_gamma`, `input_bn`, `activation_std`,
            `norm_layer`, `small_inputs`, `moving_variance`), see
            `models._common.build_classifier`.

    Returns:
        A `keras.Model` from (H, W, C) images to `num_classes` logits.
    """

    def features(x, norm, small):
        x = conv_bn_act(
            x,
            norm,
            STEM_WIDTH,
            3,
            _names("features_0"),
            act="relu6",
            strides=1 if small else 2,
        )
        index = 1
        strides = _stage_strides(small)
        for (t, c, n, _), stride in zip(INVERTED_RESIDUAL_SETTING, strides):
            for i in range(n):
                x = inverted_residual(
                    x, norm, f"features_{index}", c, stride if i == 0 else 1, t
                )
                index += 1
        return conv_bn_act(
            x, norm, LAST_CHANNEL, 1, _names(f"features_{index}"), act="relu6"
        )

    def total_stride(small):
        stride = 1 if small else 2
        for s in _stage_strides(small):
            stride *= s
        return stride

    return build_classifier(
        "mobilenet_v2",
        features,
        total_stride,
        pool_name="avgpool",
        fc_name="classifier",
        dropout=0.2,
        **kwargs,
    )
