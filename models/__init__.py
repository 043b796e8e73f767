"""The paper's architectures as Keras 3 builders, behind one registry.

    from keras_bninit.models import create_model, list_models

    model = create_model("resnet18", num_classes=10, input_shape=(32, 32, 3),
                         bn_gamma=0.1, input_bn=True)
    list_models("resnet*")
    backbone = create_model("resnet18", pretrained="resnet18.pth",
                            include_top=False, pooling="avg")

Installed, the zoo is `keras_bninit.models`; a source checkout keeps it at
the repository's top, where `import models` gives the same module.
`build` / `available` are the older names of `create_model` / `list_models`.

Families: `models.resnet` (ResNet-18/34/50/101/152, ResNeXt-50 32x4d, the
CIFAR ResNets resnet8 ... resnet110), `models.mobilenet` (MobileNetV2) and
`models.repvgg` (RepVGG-A0 and `reparameterize`). Every builder follows
torchvision's (or the RepVGG paper's) architecture layer for layer and
takes the same arguments: `num_classes`, `input_shape`, `bn_gamma`,
`input_bn`, `activation_std`, `norm_layer`, `small_inputs`,
`moving_variance`, `include_top`, `pooling` (see
`models._common.build_classifier`). Initial weights
come from the seed of `keras_bninit.set_seed` through NumPy
(`keras_bninit.initializers`), so a seed builds the same network on
TensorFlow, JAX and PyTorch.

Layer names are torchvision's module names with `_` for `.` (`layer2_0_bn1`
for `layer2.0.bn1`; PyTorch refuses `.` in names), the same on every Keras
backend. `models.torchvision_names(model)` maps each weight path to its
torchvision `state_dict` key (`keras_names` is the inverse), and
`load_torch_state_dict` / `torch_state_dict` port weights in PyTorch's layout
(see `models._torch_names`).
"""

import sys

if __name__ == "models":
    # A checkout's older name: `import models` gives `keras_bninit.models`
    # and its submodules, so one set of classes and one registry serve both.
    import keras_bninit.models as _zoo

    for _name, _module in list(sys.modules.items()):
        if _name.startswith("keras_bninit.models."):
            sys.modules["models." + _name.split(".", 2)[2]] = _module
    sys.modules[__name__] = _zoo
else:
    from . import mobilenet, repvgg, resnet
    from ._pretrained import load_pretrained
    from ._registry import (
        available,
        build,
        create_model,
        list_models,
        register_model,
    )
    from ._torch_names import (
        keras_names,
        load_torch_state_dict,
        torch_state_dict,
        torchvision_names,
    )

__all__ = [
    "available",
    "build",
    "create_model",
    "list_models",
    "load_pretrained",
    "keras_names",
    "load_torch_state_dict",
    "mobilenet",
    "register_model",
    "repvgg",
    "resnet",
    "torch_state_dict",
    "torchvision_names",
]
