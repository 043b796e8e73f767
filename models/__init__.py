"""The paper's architectures as Keras 3 builders, behind one registry.

    import models
    model = models.build("resnet18", num_classes=10, input_shape=(32, 32, 3),
                         bn_gamma=0.1, input_bn=True)
    models.available("resnet*")

Families: `models.resnet` (ResNet-18/34/50/101/152, ResNeXt-50 32x4d, the
CIFAR ResNets resnet8 ... resnet110), `models.mobilenet` (MobileNetV2) and
`models.repvgg` (RepVGG-A0 and `reparameterize`). Every builder follows
torchvision's (or the RepVGG paper's) architecture layer for layer and
takes the same arguments: `num_classes`, `input_shape`, `bn_gamma`,
`input_bn`, `activation_std`, `norm_layer`, `small_inputs`,
`moving_variance` (see `models._common.build_classifier`). Initial weights
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

from models import mobilenet, repvgg, resnet
from models._registry import available, build, register_model
from models._torch_names import (
    keras_names,
    load_torch_state_dict,
    torch_state_dict,
    torchvision_names,
)

__all__ = [
    "available",
    "build",
    "keras_names",
    "load_torch_state_dict",
    "mobilenet",
    "register_model",
    "repvgg",
    "resnet",
    "torch_state_dict",
    "torchvision_names",
]
