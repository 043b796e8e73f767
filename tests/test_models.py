"""Tests of the model zoo: every registered model through one helper.

Expected parameter counts are derived here from the published architectures
(torchvision's ResNet/ResNeXt/MobileNetV2, He et al.'s CIFAR ResNets, the
RepVGG paper's A0) by arithmetic over their layers, independently of the
builders, and the arithmetic is itself anchored to the counts published for
the reference models.
"""

import math

import keras
import numpy as np
import pytest
from _backend import gradients, to_numpy

import keras_bninit
from keras_bninit import models
from keras_bninit.models import repvgg
from keras_bninit.norms import NORM_LAYERS, norm_layer

C = 0.1  # a BN scale init other than 1, so that "gamma == c" means something

# ---------------------------------------------------------------------------
# The reference architectures as parameter arithmetic
# ---------------------------------------------------------------------------


def _conv(cin, cout, k, groups=1, bias=False):
    return cin // groups * cout * k * k + (cout if bias else 0)


def _bn(c):
    return 2 * c  # gamma and beta; moving statistics are not trainable


def torchvision_resnet(
    block,
    layers,
    num_classes,
    small=False,
    widths=(64, 128, 256, 512),
    stem=64,
    groups=1,
    width_per_group=64,
    in_channels=3,
):
    """torchvision.models.ResNet's trainable parameters (`small`: the
    paper's 3x3 stem instead of the 7x7; max-pool has no parameters)."""
    total = _conv(in_channels, stem, 3 if small else 7) + _bn(stem)
    inplanes, expansion = stem, (1 if block == "basic" else 4)
    for stage, (planes, n) in enumerate(zip(widths, layers)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            if block == "basic":
                total += 2 * _bn(planes) + _conv(inplanes, planes, 3)
                total += _conv(planes, planes, 3)
            else:
                w = int(planes * width_per_group / 64) * groups
                total += _conv(inplanes, w, 1) + _conv(w, w, 3, groups)
                total += _conv(w, planes * 4, 1)
                total += 2 * _bn(w) + _bn(planes * 4)
            if stride != 1 or inplanes != planes * expansion:
                total += _conv(inplanes, planes * expansion, 1)
                total += _bn(planes * expansion)
            inplanes = planes * expansion
    return total + inplanes * num_classes + num_classes


def cifar_resnet(depth, num_classes, small=True):
    n = (depth - 2) // 6
    return torchvision_resnet(
        "basic", (n,) * 3, num_classes, small, (16, 32, 64), 16
    )


def torchvision_mobilenet_v2(num_classes, small=False, in_channels=3):
    setting = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4)]
    setting += [(6, 96, 3), (6, 160, 3), (6, 320, 1)]
    total, inp = _conv(in_channels, 32, 3) + _bn(32), 32
    for t, c, n in setting:
        for _ in range(n):
            hidden = inp * t
            if t != 1:
                total += _conv(inp, hidden, 1) + _bn(hidden)
            total += _conv(hidden, hidden, 3, groups=hidden) + _bn(hidden)
            total += _conv(hidden, c, 1) + _bn(c)
            inp = c
    total += _conv(inp, 1280, 1) + _bn(1280)
    return total + 1280 * num_classes + num_classes


def repvgg_a0(num_classes, small=False, deploy=False, in_channels=3):
    """RepVGG paper: widths (48, 48, 96, 192, 1280), blocks (1, 2, 4, 14,
    1); the identity BN exists where in == out and stride == 1."""
    total, inp = 0, in_channels
    for stage, (w, n) in enumerate(
        zip((48, 48, 96, 192, 1280), (1, 2, 4, 14, 1))
    ):
        for i in range(n):
            stride = 2 if i == 0 and not (small and stage < 2) else 1
            if deploy:
                total += _conv(inp, w, 3, bias=True)
            else:
                total += _conv(inp, w, 3) + _conv(inp, w, 1) + 2 * _bn(w)
                total += _bn(w) if inp == w and stride == 1 else 0
            inp = w
    return total + inp * num_classes + num_classes


def test_arithmetic_matches_published_counts():
    # torchvision's documented parameter counts (1000 classes).
    assert torchvision_resnet("basic", (2, 2, 2, 2), 1000) == 11_689_512
    assert torchvision_resnet("basic", (3, 4, 6, 3), 1000) == 21_797_672
    assert torchvision_resnet("bottleneck", (3, 4, 6, 3), 1000) == 25_557_032
    assert torchvision_resnet("bottleneck", (3, 4, 23, 3), 1000) == 44_549_160
    assert torchvision_resnet("bottleneck", (3, 8, 36, 3), 1000) == 60_192_808
    assert (
        torchvision_resnet(
            "bottleneck", (3, 4, 6, 3), 1000, groups=32, width_per_group=4
        )
        == 25_028_904
    )
    assert torchvision_mobilenet_v2(1000) == 3_504_872
    # The usual CIFAR ResNet-18 (3x3 stem) has 11,173,962 parameters.
    assert torchvision_resnet("basic", (2, 2, 2, 2), 10, small=True) == (
        11_173_962
    )
    # He et al.'s CIFAR ResNets with option-A (parameter-free) shortcuts, as
    # published (e.g. akamaster/pytorch_resnet_cifar10); ours use projection
    # shortcuts: two 1x1 conv + BN, 16->32 and 32->64.
    projections = _conv(16, 32, 1) + _bn(32) + _conv(32, 64, 1) + _bn(64)
    published = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}
    published[110] = 1_727_962
    for depth, count in published.items():
        assert cifar_resnet(depth, 10) - projections == count
    # RepVGG paper, Table: A0 has 8.30M parameters after fusion; the
    # training-time form is 9.11M (timm).
    assert round(repvgg_a0(1000, deploy=True) / 1e6, 2) == 8.31
    assert math.floor(repvgg_a0(1000, deploy=True) / 1e4) / 100 == 8.30
    assert round(repvgg_a0(1000) / 1e6, 2) == 9.11


# ---------------------------------------------------------------------------
# One helper for every registered model
# ---------------------------------------------------------------------------

# name -> expected trainable parameters as a function of (classes, small).
EXPECTED_PARAMS = {
    "resnet18": lambda n, s: torchvision_resnet("basic", (2, 2, 2, 2), n, s),
    "resnet34": lambda n, s: torchvision_resnet("basic", (3, 4, 6, 3), n, s),
    "resnet50": lambda n, s: torchvision_resnet(
        "bottleneck", (3, 4, 6, 3), n, s
    ),
    "resnet101": lambda n, s: torchvision_resnet(
        "bottleneck", (3, 4, 23, 3), n, s
    ),
    "resnet152": lambda n, s: torchvision_resnet(
        "bottleneck", (3, 8, 36, 3), n, s
    ),
    "resnext50_32x4d": lambda n, s: torchvision_resnet(
        "bottleneck", (3, 4, 6, 3), n, s, groups=32, width_per_group=4
    ),
    "mobilenet_v2": lambda n, s: torchvision_mobilenet_v2(n, s),
    "repvgg_a0": lambda n, s: repvgg_a0(n, s),
    **{
        f"resnet{d}": (lambda n, s, d=d: cifar_resnet(d, n, s))
        for d in (8, 20, 32, 44, 56, 110)
    },
}
# Final feature-map size at 32x32 (small) and 224x224 inputs.
FINAL_SIZE = {"mobilenet_v2": (8, 7), "repvgg_a0": (4, 7)}
CIFAR = {"resnet8", "resnet20", "resnet32", "resnet44", "resnet56"}
CIFAR |= {"resnet110"}
# Models too large to save and reload in the fast suite.
LARGE = {"resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"}


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def layer_names(model):
    return [layer.name for layer in model.layers]


def norm_layers(model):
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        and not isinstance(layer, keras_bninit.InputBatchNorm)
    ]


def check_init(model, c):
    """Section 4.1 initialization: BN gamma c / beta 0, Kaiming normal fan-in
    conv kernels, PyTorch-uniform dense kernels, zero biases."""
    bns = norm_layers(model)
    assert bns
    for layer in bns:
        np.testing.assert_allclose(layer.gamma.numpy(), c, rtol=1e-6)
        np.testing.assert_array_equal(layer.beta.numpy(), 0.0)
    kernels = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    depthwise = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    ]
    assert kernels
    for layer in kernels + depthwise:
        w = layer.kernel.numpy()
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            fan_in = w.shape[0] * w.shape[1]  # PyTorch: (C, 1, k, k)
        else:
            fan_in = np.prod(w.shape[:3])  # (k, k, in / groups, out)
        if w.size >= 20_000:  # enough samples for a 3 % check
            assert abs(w.mean()) < 0.05 * math.sqrt(2 / fan_in)
            assert w.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
        assert layer.bias is None or not np.any(layer.bias.numpy())
    (fc,) = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
    ]
    bound = 1 / math.sqrt(fc.kernel.shape[0])
    w = fc.kernel.numpy()
    assert np.abs(w).max() <= bound
    if w.size >= 20_000:
        assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    np.testing.assert_array_equal(fc.bias.numpy(), 0.0)


def run_model_test(name, size, num_classes, input_bn, c):
    """Builds `name` and checks its output shape, parameter count against
    the reference architecture, final feature-map size and initialization."""
    small = size <= 64
    model = models.build(
        name,
        num_classes=num_classes,
        input_shape=(size, size, 3),
        bn_gamma=c,
        input_bn=input_bn,
    )
    assert model.name == name
    assert model.output_shape == (None, num_classes)
    expected = EXPECTED_PARAMS[name](num_classes, small)
    assert trainable_params(model) == expected + (3 if input_bn else 0)
    pool = model.get_layer({"repvgg_a0": "gap"}.get(name, "avgpool"))
    if name in CIFAR:
        final = size // (4 if small else 16)
    else:
        final = FINAL_SIZE.get(name, (4, 7))[0 if small else 1]
    assert pool.input.shape[1:3] == (final, final)
    check_init(model, c)
    if input_bn:
        gamma = model.get_layer("input_bn").gamma.numpy()
        np.testing.assert_allclose(gamma, 0.58 * c, rtol=1e-6)
    return model


def test_registry_lists_every_model():
    assert models.available() == sorted(EXPECTED_PARAMS)
    assert models.available("resnext*") == ["resnext50_32x4d"]


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_small_inputs(name):
    run_model_test(name, 32, 10, input_bn=True, c=C)


@pytest.mark.parametrize(
    "name", [n for n in sorted(EXPECTED_PARAMS) if n not in CIFAR]
)
def test_imagenet_size(name):
    run_model_test(name, 224, 1000, input_bn=False, c=1.0)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] if n in LARGE else [])
        for n in sorted(EXPECTED_PARAMS)
    ],
)
def test_keras_round_trip(name, tmp_path):
    model = models.build(
        name, num_classes=10, input_shape=(32, 32, 3), bn_gamma=C, input_bn=True
    )
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype("f4")
    expected = model(x, training=False)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False), expected, atol=1e-6)
    assert layer_names(loaded) == layer_names(model)


# ---------------------------------------------------------------------------
# Architecture details
# ---------------------------------------------------------------------------


def test_resnet_names_and_stems():
    small = models.build("resnet18", num_classes=10, input_shape=(64, 64, 3))
    large = models.build("resnet18", num_classes=10, input_shape=(65, 65, 3))
    assert small.get_layer("conv1").kernel.shape == (3, 3, 3, 64)
    assert small.get_layer("conv1").strides == (1, 1)
    assert "maxpool" not in layer_names(small)
    assert large.get_layer("conv1").kernel.shape == (7, 7, 3, 64)
    assert large.get_layer("maxpool").pool_size == (3, 3)
    for layer in ("layer2_0_conv1", "layer2_0_bn1", "layer4_1_bn2", "fc"):
        small.get_layer(layer)
    down = small.get_layer("layer2_0_downsample_0")
    assert down.kernel.shape == (1, 1, 64, 128)
    assert down.strides == (2, 2)
    assert isinstance(
        small.get_layer("layer2_0_downsample_1"),
        keras.layers.BatchNormalization,
    )
    # The kernel paths the optimizer and diagnostics report.
    assert small.get_layer("layer2_0_conv1").kernel.path == (
        "layer2_0_conv1/kernel"
    )
    # Bottleneck (v1.5: stride on the 3x3 conv) and ResNeXt grouping.
    x = models.build("resnext50_32x4d", num_classes=10, input_shape=(32, 32, 3))
    conv2 = x.get_layer("layer3_0_conv2")
    assert (conv2.groups, conv2.strides, conv2.filters) == (32, (2, 2), 512)
    assert x.get_layer("layer3_0_conv1").strides == (1, 1)
    assert x.get_layer("layer1_0_downsample_0").strides == (1, 1)


def test_cifar_resnet_layout():
    model = models.build("resnet20")  # CIFAR defaults: 10 classes, 32x32
    assert model.output_shape == (None, 10)
    blocks = {
        name.rsplit("_", 1)[0]
        for name in layer_names(model)
        if name.endswith("_add")
    }
    assert sorted(blocks) == [
        f"layer{s}_{i}" for s in (1, 2, 3) for i in (0, 1, 2)
    ]
    widths = [model.get_layer(f"layer{s}_0_conv1").filters for s in (1, 2, 3)]
    assert widths == [16, 32, 64]


def test_mobilenet_v2_layout():
    model = models.build(
        "mobilenet_v2", num_classes=10, input_shape=(32, 32, 3)
    )
    assert model.get_layer("features_0_0").strides == (1, 1)
    assert model.get_layer("features_2_conv_1_0").strides == (1, 1)  # 24
    assert model.get_layer("features_4_conv_1_0").strides == (1, 1)  # 32
    assert model.get_layer("features_7_conv_1_0").strides == (2, 2)  # 64
    assert model.get_layer("features_1_conv_0_0").kernel.shape == (3, 3, 32, 1)
    assert model.get_layer("features_1_conv_1").kernel.shape == (1, 1, 32, 16)
    assert model.get_layer("features_3_add")  # residual: 24 -> 24, stride 1
    assert model.get_layer("features_18_0").filters == 1280
    assert model.get_layer("classifier_0").rate == 0.2
    assert model.get_layer("classifier_1").units == 10
    large = models.build("mobilenet_v2", input_shape=(224, 224, 3))
    assert large.get_layer("features_2_conv_1_0").strides == (2, 2)


def test_repvgg_layout():
    small = models.build("repvgg_a0", num_classes=10, input_shape=(32, 32, 3))
    large = models.build("repvgg_a0", num_classes=10)
    names = set(layer_names(small))
    assert "stage1_0_rbr_identity" in names  # stride 1, 48 -> 48
    assert "stage1_0_rbr_identity" not in layer_names(large)
    assert "stage0_rbr_identity" not in names  # 3 -> 48
    assert small.get_layer("stage3_13_rbr_1x1_conv").kernel.shape == (
        1,
        1,
        192,
        192,
    )
    assert small.get_layer("stage4_0_rbr_dense_conv").strides == (2, 2)
    assert small.get_layer("linear").units == 10


def _torch_conv2d(x, kernel, stride, padding):
    """PyTorch's Conv2d (cross-correlation, zero padding on every side) in
    NumPy, for one channels-last image and a (k, k, in, out) kernel."""
    k = kernel.shape[0]
    x = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    size = (x.shape[0] - k) // stride + 1
    out = np.zeros((size, size, kernel.shape[-1]))
    for i in range(size):
        for j in range(size):
            patch = x[i * stride : i * stride + k, j * stride : j * stride + k]
            out[i, j] = np.tensordot(patch, kernel, axes=3)
    return out


@pytest.mark.parametrize("size", [7, 8])
@pytest.mark.parametrize(
    "kernel_size, stride", [(3, 2), (7, 2), (1, 2), (3, 1)]
)
def test_convs_pad_like_pytorch(kernel_size, stride, size):
    # Keras's "same" pads only bottom/right for stride 2; torchvision pads
    # kernel_size // 2 on every side: the builders must see the same pixels.
    rng = np.random.default_rng(0)
    inputs = keras.Input((size, size, 2))
    outputs = models._layers.conv(
        inputs, 3, kernel_size, name="conv", strides=stride
    )
    model = keras.Model(inputs, outputs)
    x = rng.normal(size=(size, size, 2))
    kernel = model.get_layer("conv").kernel.numpy()
    expected = _torch_conv2d(x, kernel, stride, kernel_size // 2)
    got = to_numpy(model(x[None].astype("f4")))[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(NORM_LAYERS))
def test_norm_layer_factories_plug_in(kind):
    calls = []
    factory = norm_layer(kind)

    def recording(**kwargs):
        calls.append(kwargs)
        return factory(**kwargs)

    model = models.build(
        "resnet8", input_shape=(8, 8, 3), bn_gamma=C, norm_layer=recording
    )
    # conv1 + 2 per block + 2 projections; every call is (gamma=c, name=...)
    assert len(calls) == 1 + 3 * 2 + 2
    assert all(
        set(kw) == {"gamma", "name"} and kw["gamma"] == C for kw in calls
    )
    assert {kw["name"] for kw in calls} >= {"bn1", "layer3_0_downsample_1"}
    out = model(np.ones((2, 8, 8, 3), "f4"), training=True)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("kind", ["standard", "a2"])
def test_unbiased_moving_variance_reaches_every_bn(kind):
    """moving_variance="unbiased": PyTorch's update in every BN (the input
    BN included), the same initial weights and outputs."""
    built = {}
    for moving_variance in ("biased", "unbiased"):
        keras_bninit.set_seed(3)
        built[moving_variance] = models.build(
            "resnet8",
            input_shape=(8, 8, 3),
            bn_gamma=C,
            input_bn=True,
            norm_layer=norm_layer(kind),
            moving_variance=moving_variance,
        )
    biased, unbiased = built["biased"], built["unbiased"]
    for a, b in zip(biased.weights, unbiased.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), a.path)
    layers = keras_bninit.batch_norm_layers(unbiased)
    assert len(layers) == 1 + 1 + 3 * 2 + 2
    assert all(
        layer.moving_variance_convention == "unbiased" for layer in layers
    )
    pairs = list(zip(layers, keras_bninit.batch_norm_layers(biased)))
    for layer, ref in pairs:  # from 0, a step stores its share alone
        for bn in (layer, ref):
            bn.moving_variance.assign(np.zeros(bn.moving_variance.shape))
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("f4")
    np.testing.assert_array_equal(
        to_numpy(biased(x, training=True)), to_numpy(unbiased(x, training=True))
    )
    # One step stores 0.1 v (Keras) or 0.1 v n / (n - 1) (PyTorch), with
    # n = batch x positions at the layer (16 to 256 here).
    for layer, ref in pairs:
        n = int(np.prod(layer.input.shape[1:-1])) * len(x)
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance),
            to_numpy(ref.moving_variance).astype(np.float64) * n / (n - 1),
            rtol=1e-5,
            err_msg=layer.name,
        )


def test_unbiased_needs_a_norm_layer_that_takes_it():
    def plain(gamma, name):
        return keras.layers.BatchNormalization(name=name)

    with pytest.raises(ValueError, match="takes `moving_variance`"):
        models.build("resnet8", norm_layer=plain, moving_variance="unbiased")
    models.build("resnet8", norm_layer=plain)  # the default binds nothing


# ---------------------------------------------------------------------------
# Argument errors, before any layer is made
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"num_classes": 2.0}, "num_classes=2.0"),
        ({"num_classes": True}, "num_classes=True"),
        ({"input_shape": (32, 32)}, r"input_shape=\(32, 32\)"),
        ({"input_shape": (1, 32, 32, 3)}, "input_shape"),
        ({"input_shape": (32, 32, 0)}, "input_shape"),
        ({"input_shape": (4, 4, 3)}, ">= 8"),  # small: 3 stride-2 stages
        ({"input_shape": (31, 80, 3), "small_inputs": False}, ">= 32"),
        ({"input_shape": (None, None, 3)}, "small_inputs"),
        ({"small_inputs": "yes"}, "small_inputs='yes'"),
        ({"bn_gamma": 0}, "bn_gamma=0"),
        ({"activation_std": -1.0}, "activation_std"),
        ({"input_bn": 1}, "input_bn=1"),
        (
            {"moving_variance": "Unbiased"},
            r"one of biased, unbiased\. Received: moving_variance='Unbiased'",
        ),
    ],
)
def test_invalid_arguments(kwargs, match):
    calls = []

    def recording(**kw):
        calls.append(kw)
        return keras_bninit.batch_norm(**kw)

    kwargs = {"num_classes": 10, "input_shape": (32, 32, 3), **kwargs}
    with pytest.raises(ValueError, match=match):
        models.build("resnet18", norm_layer=recording, **kwargs)
    assert calls == []  # rejected before any layer was made


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18.*Received: name='vgg16'"):
        models.build("vgg16")
    with pytest.raises(ValueError, match="repvgg_a0"):
        models.build(["resnet18"])


def test_variable_input_size():
    model = models.build(
        "resnet8", input_shape=(None, None, 3), small_inputs=True
    )
    for size in (8, 20):
        out = model(np.zeros((1, size, size, 3), "f4"), training=False)
        assert out.shape == (1, 10)


def test_minimum_sizes():
    # Each network accepts exactly its overall stride as the smallest side.
    for name, size, small in [
        ("resnet8", 4, True),
        ("mobilenet_v2", 4, True),
        ("repvgg_a0", 8, True),
        ("resnet50", 32, False),
    ]:
        shape = (size, size, 3)
        model = models.build(name, input_shape=shape, small_inputs=small)
        assert model.output_shape[-1] in (10, 1000)
        with pytest.raises(ValueError, match=f">= {size}"):
            models.build(
                name, input_shape=(size - 1, size, 3), small_inputs=small
            )


# ---------------------------------------------------------------------------
# Training and RepVGG export
# ---------------------------------------------------------------------------


def test_one_training_step_with_param_group_optimizer():
    keras_bninit.set_seed(1)
    model = models.build(
        "resnet8", input_shape=(8, 8, 3), bn_gamma=C, input_bn=True
    )
    optimizer = keras_bninit.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9),
        gamma_lr_divisor=100.0,
        weight_decay=1e-4,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 8, 8, 3)).astype("f4")
    y = rng.integers(0, 10, size=(16,))
    before = {w.path: w.numpy() for w in model.weights}
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    after = {w.path: w.numpy() for w in model.weights}
    assert optimizer.group_of(model.get_layer("bn1").gamma) == "scale"
    assert optimizer.group_of(model.get_layer("conv1").kernel) == "decay"
    assert optimizer.group_of(model.get_layer("fc").bias) == "no_decay"
    for path in ("conv1/kernel", "fc/kernel", "bn1/beta", "bn1/moving_mean"):
        assert not np.array_equal(before[path], after[path]), path
    # The scale moved, but with lr / 100 by far less than the shift.
    gamma_step = np.abs(after["bn1/gamma"] - before["bn1/gamma"]).max()
    beta_step = np.abs(after["bn1/beta"] - before["bn1/beta"]).max()
    assert 0 < gamma_step < beta_step / 10


def _randomize_norms(model, rng):
    """Trained-looking BN statistics and affine parameters."""
    for layer in norm_layers(model):
        c = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0, 0.2, c))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
        layer.gamma.assign(layer.gamma.numpy() * rng.uniform(0.5, 1.5, c))
        layer.beta.assign(rng.normal(0, 0.1, c))


@pytest.mark.parametrize("size", [32, 64])
def test_repvgg_reparameterize_matches_in_inference(size):
    rng = np.random.default_rng(size)
    shape = (size, size, 3)
    model = models.build(
        "repvgg_a0",
        num_classes=10,
        input_shape=shape,
        bn_gamma=1.0,
        input_bn=True,
        small_inputs=size == 32,
    )
    _randomize_norms(model, rng)
    fused = repvgg.reparameterize(model)
    assert fused.name == "repvgg_a0"
    assert trainable_params(fused) == repvgg_a0(10, deploy=True) + 3
    assert not norm_layers(fused)  # only the input BN is left
    assert fused.get_layer("stage1_0_rbr_reparam").kernel.shape == (
        3,
        3,
        48,
        48,
    )
    x = rng.uniform(size=(4, *shape)).astype("f4")
    expected = to_numpy(model(x, training=False))
    got = to_numpy(fused(x, training=False))
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)


def test_repvgg_reparameterize_keeps_an_unbiased_input_bn():
    model = models.build(
        "repvgg_a0",
        input_shape=(32, 32, 3),
        input_bn=True,
        moving_variance="unbiased",
    )
    _randomize_norms(model, np.random.default_rng(2))
    fused = repvgg.reparameterize(model)
    assert fused.get_layer("input_bn").moving_variance_convention == (
        "unbiased"
    )
    x = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype("f4")
    expected = to_numpy(model(x, training=False))
    np.testing.assert_allclose(
        to_numpy(fused(x, training=False)),
        expected,
        atol=1e-5 * np.abs(expected).max(),
        rtol=0,
    )


def test_repvgg_fused_saved_model_export(tmp_path):
    model = models.build(
        "repvgg_a0",
        num_classes=10,
        input_shape=(32, 32, 3),
        bn_gamma=C,
        input_bn=True,
    )
    _randomize_norms(model, np.random.default_rng(0))
    fused = repvgg.reparameterize(model)
    if keras.backend.backend() != "tensorflow":
        pytest.skip("SavedModel export is a TensorFlow-backend feature")
    import tensorflow as tf

    fused.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("f4")
    np.testing.assert_allclose(
        served.serve(x).numpy(), to_numpy(model(x, training=False)), atol=1e-5
    )


def test_reparameterize_rejects_other_models():
    with pytest.raises(ValueError, match="rbr_dense"):
        repvgg.reparameterize(models.build("resnet8"))
    a1 = models.build(
        "repvgg_a0", input_shape=(32, 32, 3), norm_layer=norm_layer("a1")
    )
    with pytest.raises(ValueError, match="A1BatchNorm"):
        repvgg.reparameterize(a1)


# ---------------------------------------------------------------------------
# Every builder with every BN formulation (issue: ablations and related
# methods): build on a tiny input and take one optimizer step.
# ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", models.available())
def test_every_builder_trains_with_every_formulation(name):
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype("float32")
    y = np.array([0, 1])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    for kind in NORM_LAYERS:
        model = models.build(
            name,
            num_classes=2,
            input_shape=(16, 16, 3),
            bn_gamma=C,
            input_bn=True,
            norm_layer=norm_layer(kind),
        )
        opt = keras_bninit.ParamGroupOptimizer(
            keras.optimizers.SGD(0.01, momentum=0.9)
        )
        variables = model.trainable_variables
        loss, grads = gradients(
            lambda m=model: loss_fn(y, m(x, training=True)), variables
        )
        assert np.isfinite(loss), (name, kind)
        # Every parameter (the formulations' extra ones too) gets a gradient.
        for v, g in zip(variables, grads):
            assert np.isfinite(g).all() and np.any(g), (name, kind, v.path)
        opt.apply(grads, variables)
        assert int(opt.iterations.numpy()) == 1
        assert all(np.isfinite(v.numpy()).all() for v in variables)
        # The parameter that carries c gets the reduced learning rate.
        scales = [v for v in variables if opt.group_of(v) == "scale"]
        n_norms = sum(
            isinstance(layer, keras.layers.BatchNormalization)
            for layer in model._flatten_layers(include_self=False)
        )
        assert len(scales) == n_norms, (name, kind)


def test_build_names_an_unknown_argument_and_the_builder():
    with pytest.raises(
        ValueError,
        match=r"^The model builder 'resnet8' does not take the argument "
        r"'gamma'\. Valid: num_classes, input_shape, bn_gamma, .*"
        r"Received: gamma=0\.1$",
    ):
        models.build("resnet8", gamma=0.1)
    with pytest.raises(
        ValueError, match="'repvgg_a0' .* include_top, pooling, deploy"
    ):
        models.build("repvgg_a0", widths=2)
