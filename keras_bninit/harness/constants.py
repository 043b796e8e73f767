"""The run constants: the paper's defaults, settings and choices
(Sections 3.2, 4.1-4.5).

What `harness.config`'s fields default to and choose from, kept apart from
the fields themselves. Like `harness.config`, which gives every name here
too, this module imports only the standard library, so `train.py` reads it
before the Keras backend is chosen.
"""

# The proposal's defaults (Section 3.2), and the related methods'
# (Section 4.5: RBN and IEBN are trained like BASE unless asked otherwise).
PROPOSAL_DEFAULTS = {"gamma": 0.1, "gamma_lr_divisor": 100.0}
RELATED = ("rbn", "rbn-", "iebn", "iebn-")
RELATED_DEFAULTS = {"gamma": 1.0, "gamma_lr_divisor": 1.0}
# BASE: c = 1, a = 1, standard BN; everything else (input normalization
# included, Section 3.2) is kept from the configuration compared.
BASELINE_OVERRIDES = {"gamma": 1.0, "gamma_lr_divisor": 1.0, "bn": "standard"}
ABLATIONS = ("init-only", "lr-only")

# The BN formulations (keras_bninit.NORM_LAYERS) and the model zoo's names
# (models.available()); listed here so that they answer before Keras loads,
# and tested equal to the registries.
BN_KINDS = ("standard", "a1", "a2", "rbn", "iebn", "rbn-", "iebn-")
MODELS = (
    "mobilenet_v2",
    "repvgg_a0",
    "resnet8",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "resnext50_32x4d",
)
INPUT_NORMS = ("bn", "fixed", "offline", "none")
# The input paths (`harness.data`: tf.data; `harness.memory`: the images
# on the accelerator, rows of indices per step). The default is the faster
# one on each backend, as measured by benchmarks/harness.py (README).
INPUTS = ("tfdata", "memory")
DEFAULT_INPUT = {"tensorflow": "tfdata", "jax": "memory", "torch": "memory"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# The paper's settings per data set (Sections 4.1, 4.2): model, epochs,
# learning rate and batch size (CIFAR 128, CUB/Cars 64). digits is the
# offline demo, sized for a CPU (64: 21 steps per epoch); "directory" is a
# folder of class subfolders; "synthetic" CIFAR-shaped random images.
DATASET_DEFAULTS = {
    "cifar10": {"model": "resnet18", "epochs": 180, "lr": 0.1, "batch": 128},
    "cifar100": {"model": "resnet34", "epochs": 180, "lr": 0.1, "batch": 128},
    "caltech_birds2011": {
        "model": "resnet50",
        "epochs": 180,
        "lr": 0.1,
        "batch": 64,
    },
    "cars196": {"model": "resnet50", "epochs": 180, "lr": 0.1, "batch": 64},
    "digits": {"model": "resnet8", "epochs": 15, "lr": 0.1, "batch": 64},
    "directory": {"model": "resnet18", "epochs": 180, "lr": 0.1, "batch": 128},
    "synthetic": {"model": "resnet18", "epochs": 3, "lr": 0.1, "batch": 128},
}
DIRECTORY = "directory"
# CIFAR-10's training size, the synthetic data set's default; and the
# share of a data set without a test split held out as its test set, and
# the share of the training set held out for validation (Section 4.2).
SYNTHETIC_SIZE = 50_000
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1
DATASET_NAMES = tuple(n for n in DATASET_DEFAULTS if n != DIRECTORY)

# Seeds fit a signed 32-bit integer (TensorFlow's and NumPy's seeds).
SEED_LIMIT = 2**31
# Batches of a precise-BN recomputation when `--precise-bn` gives no N
# (Wu & Johnson use a few hundred; keras_bninit.precise_bn's default too).
PRECISE_BN_BATCHES = 200
# The schedule's floor: PyTorch's CosineAnnealingLR eta_min in the
# reference (Section 4.2).
ETA_MIN = 1e-8

# The reference's forms (PyTorch) and Keras's (`--keras-semantics`), field
# by field; docs/method.md gives the size of each difference.
TORCH_SEMANTICS = {
    "sgd": "torch",
    "moving_variance": "unbiased",
    "scale_lr_floor": "per_group",
}
KERAS_SEMANTICS = {
    "sgd": "keras",
    "moving_variance": "biased",
    "scale_lr_floor": "divided",
}
