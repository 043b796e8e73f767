"""Keras weight paths <-> torchvision state_dict keys, and weight porting.

The expected torchvision keys and PyTorch shapes are written here from the
reference architectures (torchvision's `ResNet`, `mobilenet_v2`, the RepVGG
paper's `RepVGG`), independently of the builders and of the mapping.
"""

import keras
import numpy as np
import pytest
from _backend import to_numpy

from keras_bninit import models
from keras_bninit.models import _torch_names

BN = ("weight", "bias", "running_mean", "running_var")


class _StateDict(dict):
    """torchvision state_dict keys -> PyTorch shapes, built module by
    module as the reference code creates them."""

    def conv(self, name, cout, cin, k, groups=1, bias=False):
        self[f"{name}.weight"] = (cout, cin // groups, k, k)
        if bias:
            self[f"{name}.bias"] = (cout,)

    def bn(self, name, c):
        for p in BN:
            self[f"{name}.{p}"] = (c,)

    def linear(self, name, cout, cin):
        self[f"{name}.weight"] = (cout, cin)
        self[f"{name}.bias"] = (cout,)


def torchvision_resnet(
    block, layers, classes, small, widths, stem, groups=1, width_per_group=64
):
    sd = _StateDict()
    sd.conv("conv1", stem, 3, 3 if small else 7)
    sd.bn("bn1", stem)
    inplanes, expansion = stem, (1 if block == "basic" else 4)
    for s, (planes, n) in enumerate(zip(widths, layers), 1):
        for i in range(n):
            pre, stride = f"layer{s}.{i}", (2 if s > 1 and i == 0 else 1)
            if block == "basic":
                sd.conv(f"{pre}.conv1", planes, inplanes, 3)
                sd.bn(f"{pre}.bn1", planes)
                sd.conv(f"{pre}.conv2", planes, planes, 3)
                sd.bn(f"{pre}.bn2", planes)
            else:
                w = int(planes * width_per_group / 64) * groups
                sd.conv(f"{pre}.conv1", w, inplanes, 1)
                sd.bn(f"{pre}.bn1", w)
                sd.conv(f"{pre}.conv2", w, w, 3, groups)
                sd.bn(f"{pre}.bn2", w)
                sd.conv(f"{pre}.conv3", planes * 4, w, 1)
                sd.bn(f"{pre}.bn3", planes * 4)
            if stride != 1 or inplanes != planes * expansion:
                sd.conv(f"{pre}.downsample.0", planes * expansion, inplanes, 1)
                sd.bn(f"{pre}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd.linear("fc", classes, inplanes)
    return sd


def torchvision_mobilenet_v2(classes):
    sd = _StateDict()
    sd.conv("features.0.0", 32, 3, 3)
    sd.bn("features.0.1", 32)
    setting = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4)]
    setting += [(6, 96, 3), (6, 160, 3), (6, 320, 1)]
    index, inp = 1, 32
    for t, c, n in setting:
        for _ in range(n):
            pre, hidden, j = f"features.{index}.conv", inp * t, 0
            if t != 1:  # Conv2dNormActivation(inp, hidden, 1)
                sd.conv(f"{pre}.0.0", hidden, inp, 1)
                sd.bn(f"{pre}.0.1", hidden)
                j = 1
            sd.conv(f"{pre}.{j}.0", hidden, hidden, 3, groups=hidden)
            sd.bn(f"{pre}.{j}.1", hidden)
            sd.conv(f"{pre}.{j + 1}", c, hidden, 1)
            sd.bn(f"{pre}.{j + 2}", c)
            index, inp = index + 1, c
    sd.conv(f"features.{index}.0", 1280, inp, 1)
    sd.bn(f"features.{index}.1", 1280)
    sd.linear("classifier.1", classes, 1280)
    return sd


def repvgg_a0(classes, small, deploy=False):
    sd, inp = _StateDict(), 3
    widths, blocks = (48, 48, 96, 192, 1280), (1, 2, 4, 14, 1)
    for s, (w, n) in enumerate(zip(widths, blocks)):
        for i in range(n):
            pre = "stage0" if s == 0 else f"stage{s}.{i}"
            stride = 2 if i == 0 and not (small and s < 2) else 1
            if deploy:
                sd.conv(f"{pre}.rbr_reparam", w, inp, 3, bias=True)
            else:
                sd.conv(f"{pre}.rbr_dense.conv", w, inp, 3)
                sd.bn(f"{pre}.rbr_dense.bn", w)
                sd.conv(f"{pre}.rbr_1x1.conv", w, inp, 1)
                sd.bn(f"{pre}.rbr_1x1.bn", w)
                if inp == w and stride == 1:
                    sd.bn(f"{pre}.rbr_identity", w)
            inp = w
    sd.linear("linear", classes, inp)
    return sd


CASES = {
    "resnet8": lambda: torchvision_resnet(
        "basic", (1, 1, 1), 10, True, (16, 32, 64), 16
    ),
    "resnet18": lambda: torchvision_resnet(
        "basic", (2, 2, 2, 2), 10, True, (64, 128, 256, 512), 64
    ),
    "resnext50_32x4d": lambda: torchvision_resnet(
        "bottleneck", (3, 4, 6, 3), 10, True, (64, 128, 256, 512), 64, 32, 4
    ),
    "mobilenet_v2": lambda: torchvision_mobilenet_v2(10),
    "repvgg_a0": lambda: repvgg_a0(10, small=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_names_and_shapes_match_torchvision(name):
    model = models.build(
        name, num_classes=10, input_shape=(32, 32, 3), input_bn=True
    )
    expected = CASES[name]()
    mapping = models.torchvision_names(model)
    assert sorted(mapping.values()) == sorted(expected)
    # Every torchvision key once; only the input BN (no torchvision twin)
    # and the BN's non-weight bookkeeping are left out.
    unmapped = {v.path for v in model.weights} - set(mapping)
    assert {p.split("/")[0] for p in unmapped} <= {"input_bn", "seed_generator"}
    exported = models.torch_state_dict(model)
    assert {k: v.shape for k, v in exported.items()} == expected
    # The inverse.
    inverse = models.keras_names(model)
    assert {inverse[k]: k for k in inverse} == mapping
    for path, key in mapping.items():
        layer, _ = path.split("/")
        module = key.rsplit(".", 1)[0]
        assert _torch_names.torch_module_name(layer) == module
        assert _torch_names.keras_layer_name(module) == layer


def test_repvgg_deploy_names():
    model = models.build("repvgg_a0", input_shape=(32, 32, 3), deploy=True)
    expected = repvgg_a0(10, small=True, deploy=True)
    assert sorted(models.torchvision_names(model).values()) == sorted(expected)


def test_readme_examples():
    model = models.build("resnet18", num_classes=10, input_shape=(32, 32, 3))
    names = models.torchvision_names(model)
    assert names["layer2_0_downsample_1/moving_variance"] == (
        "layer2.0.downsample.1.running_var"
    )
    assert names["conv1/kernel"] == "conv1.weight"
    assert models.keras_names(model)["fc.bias"] == "fc/bias"


def test_state_dict_round_trip_gives_equal_outputs():
    rng = np.random.default_rng(0)
    kwargs = dict(num_classes=10, input_shape=(32, 32, 3), input_bn=False)
    source = models.build("mobilenet_v2", **kwargs)
    for v in source.weights:
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32") * 0.1)
    target = models.build("mobilenet_v2", **kwargs)
    state = models.torch_state_dict(source)
    state["features.0.1.num_batches_tracked"] = np.array(7)  # ignored
    models.load_torch_state_dict(target, state)
    x = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(
        to_numpy(target(x, training=False)), to_numpy(source(x, training=False))
    )


def test_load_rejects_missing_keys_and_shapes():
    model = models.build("resnet8", input_shape=(16, 16, 3))
    state = models.torch_state_dict(model)
    del state["layer2.0.bn1.running_var"]
    with pytest.raises(ValueError, match="layer2.0.bn1.running_var"):
        models.load_torch_state_dict(model, state)
    state = models.torch_state_dict(model)
    state["fc.weight"] = np.zeros((10, 63), "float32")
    with pytest.raises(
        ValueError, match=r"'fc.weight'.*\(10, 64\).*\(10, 63\)"
    ):
        models.load_torch_state_dict(model, state)


def test_layouts_compute_what_pytorch_computes():
    """The ported kernels give PyTorch's own conv/linear outputs."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(1)
    inputs = keras.Input((8, 8, 6))
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, groups=2)
    depth = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)
    dense = keras.layers.Dense(5)
    y1, y2 = conv(inputs), depth(inputs)
    y3 = dense(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, [y1, y2, y3])
    for layer in (conv, depth, dense):
        for v in layer.weights:
            v.assign(rng.normal(size=v.shape).astype("float32"))
    x = rng.normal(size=(2, 8, 8, 6)).astype("float32")
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2))

    def weight(layer, variable):
        return torch.from_numpy(
            np.ascontiguousarray(
                _torch_names.to_torch_layout(
                    layer, variable, to_numpy(variable)
                )
            )
        )

    expected = f.conv2d(xt, weight(conv, conv.kernel), padding=1, groups=2)
    np.testing.assert_allclose(
        to_numpy(conv(x)), expected.numpy().transpose(0, 2, 3, 1), atol=1e-4
    )
    expected = f.conv2d(xt, weight(depth, depth.kernel), padding=1, groups=6)
    np.testing.assert_allclose(
        to_numpy(depth(x)), expected.numpy().transpose(0, 2, 3, 1), atol=1e-4
    )
    pooled = x.mean(axis=(1, 2))
    expected = f.linear(
        torch.from_numpy(pooled),
        weight(dense, dense.kernel),
        weight(dense, dense.bias),
    )
    np.testing.assert_allclose(
        to_numpy(dense(pooled)), expected.numpy(), atol=1e-4
    )
    for layer in (conv, depth, dense):
        v = layer.kernel
        back = _torch_names.from_torch_layout(layer, v, weight(layer, v))
        np.testing.assert_array_equal(back, to_numpy(v))
