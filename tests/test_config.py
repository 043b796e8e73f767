"""A run's configuration: one module, its metadata, pure keys, 0.2 stores."""

import dataclasses
import os
import re
import shutil

import pytest
from _backend import run_python

from keras_bninit.harness import config
from keras_bninit.harness.config import (
    KERAS_SEMANTICS,
    LATER_FIELDS,
    NON_RESULT_FIELDS,
    RunConfig,
    config_key,
    validate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE_02 = os.path.join(ROOT, "tests", "data", "store-0.2")

# A value other than the default for every field (valid for `validate`).
OTHER_VALUES = {
    "dataset": "cifar10",
    "model": "resnet18",
    "lr": 0.05,
    "gamma": 0.5,
    "gamma_lr_divisor": 10.0,
    "weight_decay": 5e-4,
    "momentum": 0.8,
    "epochs": 7,
    "batch_size": 32,
    "seed": 9,
    "bn": "a1",
    "input_norm": "fixed",
    "activation_std": 0.7,
    "deterministic": True,
    "jit_compile": False,
    "out": "elsewhere",
    "export": True,
    "diagnostics": True,
    "verbose": 0,
    "data_dir": "/data",
    "precise_bn": 50,
    "sgd": "keras",
    "moving_variance": "biased",
    "scale_lr_floor": "divided",
    "input": "memory",
    "precision": "mixed_bfloat16",
    "steps_per_execution": 4,
    "synthetic_size": None,
}


def test_every_field_is_in_the_key_or_declared_not_part_of_the_result():
    assert set(OTHER_VALUES) == set(config.field_names())
    base = RunConfig(dataset="digits", model="resnet8")
    key = base.key("tensorflow")
    for name, value in OTHER_VALUES.items():
        if name == "synthetic_size":
            base_s = dataclasses.replace(base, dataset="synthetic")
            other = dataclasses.replace(base_s, synthetic_size=100)
            changed = other.key("tensorflow") != base_s.key("tensorflow")
        else:
            other = dataclasses.replace(base, **{name: value})
            validate(other)
            changed = other.key("tensorflow") != key
        assert changed == (name not in NON_RESULT_FIELDS), name
    assert NON_RESULT_FIELDS == {
        "seed",
        "out",
        "export",
        "diagnostics",
        "verbose",
        "data_dir",
        "steps_per_execution",
    }


def test_later_fields_keep_0_2_keys_at_their_as_before_values():
    old = {"dataset": "digits", "model": "resnet8", "lr": 0.1, "seed": 1}
    assert config_key(old) == config_key({**old, **KERAS_SEMANTICS})
    assert config_key({**old, "torch_parity": True}) == config_key(
        {**old, **KERAS_SEMANTICS, "sgd": "torch"}
    )
    assert config_key({**old, "torch_parity": False}) == config_key(old)
    for name, value in KERAS_SEMANTICS.items():
        assert LATER_FIELDS[name] == value
    # The reference's forms (the default) are another run.
    assert config_key({**old, "moving_variance": "unbiased"}) != config_key(old)


def test_key_and_run_name_are_pure():
    # Neither the data folder nor the output folder is looked at.
    missing = RunConfig(dataset="/no/such/folder", out="/no/such/out")
    assert len(missing.key("jax")) == 16
    assert missing.run_name("jax").startswith("folder-resnet18-standard-")
    assert missing.key("jax") == missing.key("jax")
    # The backend decides the input path's default, hence the key.
    assert missing.key("jax") != missing.key("tensorflow")
    assert missing.resolved("torch").input == "memory"


def test_defaults_are_the_authors_recipe_and_keras_semantics_gives_kerass():
    c = RunConfig()
    assert (c.sgd, c.moving_variance, c.scale_lr_floor) == (
        "torch",
        "unbiased",
        "per_group",
    )
    k = RunConfig.keras_semantics(gamma=0.5)
    assert (k.sgd, k.moving_variance, k.scale_lr_floor, k.gamma) == (
        "keras",
        "biased",
        "divided",
        0.5,
    )


def test_from_dict_reads_0_2s_torch_parity():
    assert RunConfig.from_dict({"torch_parity": True}).sgd == "torch"
    assert RunConfig.from_dict({"torch_parity": False}).sgd == "keras"
    with pytest.raises(ValueError, match="`sgd` must be one of torch, keras"):
        validate(RunConfig.from_dict({"torch_parity": "yes"}))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sgd": "pytorch"}, "`sgd` must be one of torch, keras. Received: "),
        ({"moving_variance": "Unbiased"}, "unbiased, biased.*'Unbiased'"),
        ({"scale_lr_floor": 1}, "per_group, divided.*scale_lr_floor=1"),
        ({"precision": "fp16"}, "float32, mixed_bfloat16.*'fp16'"),
        ({"input": "disk"}, "tfdata, memory.*'disk'"),
        ({"deterministic": 1}, "True or False.*deterministic=1"),
        ({"jit_compile": "yes"}, "auto, True, False.*'yes'"),
        ({"steps_per_execution": 0}, "steps_per_execution=0"),
        ({"synthetic_size": 50}, "for dataset='synthetic' only"),
        ({"dataset": ""}, "`dataset` must be a data set name"),
    ],
)
def test_validate_names_the_bad_value_and_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate(RunConfig(**kwargs))


def test_validate_accepts_numpy_integers():
    np = pytest.importorskip("numpy")
    validate(RunConfig(epochs=np.int64(3), seed=np.int32(4)))


def test_the_module_imports_no_backend():
    code = (
        "import sys, importlib.util, os\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "import train\n"
        "c = train._config()\n"
        "print(c.RunConfig().key('jax'))\n"
        "heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.split()
    assert len(out[0]) == 16 and out[1] == "[]"


# Names of run constants, each defined in exactly one module.
RUN_CONSTANTS = (
    "INPUT_NORMS",
    "SEED_LIMIT",
    "BASELINE_OVERRIDES",
    "ABLATIONS",
    "PROPOSAL_DEFAULTS",
    "RELATED_DEFAULTS",
    "DATASET_DEFAULTS",
    "PRECISE_BN_BATCHES",
    "INPUTS",
    "PRECISIONS",
    "DEFAULT_INPUT",
    "BN_KINDS",
    "MODELS",
    "GRID_FIELDS",
    "NON_RESULT_FIELDS",
    "LATER_FIELDS",
)


def test_each_run_constant_is_defined_once():
    sources = [os.path.join(ROOT, "train.py")]
    for folder in ("keras_bninit", "models"):
        for path, _, names in os.walk(os.path.join(ROOT, folder)):
            sources += [
                os.path.join(path, n) for n in names if n.endswith(".py")
            ]
    for name in RUN_CONSTANTS:
        pattern = re.compile(rf"^{name}\s*=", re.MULTILINE)
        defined = [p for p in sources if pattern.search(open(p).read())]
        # Derived from the fields: config.py; the others: constants.py,
        # which harness.config gives too.
        home = "config.py" if name.endswith("_FIELDS") else "constants.py"
        assert defined == [
            os.path.join(ROOT, "keras_bninit", "harness", home)
        ], name
        assert hasattr(config, name), name


def test_copied_choices_equal_the_registries():
    import keras_bninit
    from keras_bninit import models
    from keras_bninit.harness.datasets import DATASETS

    assert config.BN_KINDS == tuple(keras_bninit.NORM_LAYERS)
    assert sorted(config.MODELS) == models.available()
    assert set(config.DATASET_DEFAULTS) == set(DATASETS)
    assert (
        config.PRECISE_BN_BATCHES == keras_bninit.precise_bn.DEFAULT_NUM_BATCHES
    )


def test_a_0_2_store_is_reused_without_training(tmp_path):
    from keras_bninit.harness.presets import expand
    from keras_bninit.harness.store import ResultStore
    from keras_bninit.harness.sweep import run_sweep

    sweep_dir = tmp_path / "sweep"
    shutil.copytree(STORE_02, sweep_dir)
    fixed = dict(epochs=1, verbose=0, precise_bn=20, input="tfdata")
    grid = [{"dataset": "digits", "model": "tiny", "gamma": 0.1}]
    runs = expand(grid, "1-2", **fixed, **KERAS_SEMANTICS)
    runs += expand(
        grid,
        "1",
        add_base=False,
        **fixed,
        **{**KERAS_SEMANTICS, "sgd": "torch"},
    )

    def never(*args, **kwargs):
        raise AssertionError("a stored run was built again")

    counts = run_sweep(runs, str(sweep_dir), quiet=True, build_model=never)
    assert (
        counts["total"] == 5 and counts["skipped"] == 5 and counts["ran"] == 0
    )
    # Today's defaults (the reference's forms) are other runs.
    with ResultStore(str(sweep_dir)) as store:
        for run in expand(grid, "1-2", **fixed):
            assert not store.completed(run.key(), run.seed)


def test_a_long_folder_name_gives_a_run_name_the_file_system_takes(tmp_path):
    folder = tmp_path / ("x" * 240)
    name = RunConfig(dataset=str(folder)).run_name("tensorflow")
    assert len(name.encode()) < 200
    assert name.startswith("x" * 39 + "-")
    other = RunConfig(dataset=str(tmp_path / ("x" * 239 + "y")))
    assert other.run_name("tensorflow") != name  # the digest tells them apart
