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
`input_bn`, `activation_std`, `norm_layer`, `small_inputs` (see
`models._common.build_classifier`).
"""

from models import mobilenet, repvgg, resnet
from models._registry import available, build, register_model

__all__ = [
    "available",
    "build",
    "mobilenet",
    "register_model",
    "repvgg",
    "resnet",
]
