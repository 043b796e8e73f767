"""The wheel: one top-level package, the zoo inside it, a working command.

The wheel is built from a copy of the sources (nothing written to the
checkout) without network (`--no-build-isolation`), installed with
`pip --target` into a folder, and used from another folder with only that
one on the path, as an installed user would.
"""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from _backend import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = (
    "setup.cfg",
    "pyproject.toml",
    "README.md",
    "keras_bninit",
    "models",
    "bin",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(
                path,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(path, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = (work / "dist").glob("keras_bninit-*.whl")
    target = work / "site"
    subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(built),
        ],
        check=True,
        capture_output=True,
    )
    return built, target


def _installed(target, *argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def test_the_wheel_holds_only_keras_bninit(wheel):
    built, _ = wheel
    names = zipfile.ZipFile(built).namelist()
    top = {n.split("/")[0] for n in names}
    version = built.name.split("-")[1]
    assert top == {
        "keras_bninit",
        f"keras_bninit-{version}.dist-info",
        f"keras_bninit-{version}.data",
    }
    assert "keras_bninit/models/resnet.py" in names
    assert "keras_bninit/harness/cli.py" in names
    assert f"keras_bninit-{version}.data/scripts/keras-bninit" in names
    assert not any(
        n.startswith(("models/", "train.py", "tests/")) for n in names
    )


def test_installed_imports_use_the_wheel(wheel, tmp_path):
    _, target = wheel
    code = (
        "import importlib.util, keras_bninit.models as m\n"
        "print(m.__file__)\n"
        "print(importlib.util.find_spec('models'), "
        "importlib.util.find_spec('train'))\n"
        "print(m.list_models('resnet8'))\n"
    )
    result = _installed(target, sys.executable, "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == str(target / "keras_bninit" / "models" / "__init__.py")
    assert lines[1:] == ["None None", "['resnet8']"]


@pytest.mark.slow
def test_the_console_command_runs(wheel, tmp_path):
    _, target = wheel
    command = str(target / "bin" / "keras-bninit")
    usage = _installed(target, command, "run", "--help", cwd=tmp_path)
    assert usage.returncode == 0 and usage.stdout.startswith(
        "usage: keras-bninit run"
    )
    bad = _installed(target, command, "run", "--epochs", "0", cwd=tmp_path)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == (
        "keras-bninit: error: `epochs` must be a positive integer (>= 1). "
        "Received: epochs=0\n"
    )
    assert os.listdir(tmp_path) == []
    run = _installed(
        target,
        command,
        "run",
        "--dataset",
        "digits",
        "--model",
        "resnet8",
        "--epochs",
        "1",
        "--precise-bn",
        "--out",
        "out",
        "--verbose",
        "0",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (folder,) = os.listdir(tmp_path / "out")
    result = (tmp_path / "out" / folder / "result.json").read_text()
    assert '"status": "ok"' in result


def test_a_checkout_uses_its_own_zoo(tmp_path):
    # Another checkout (this one is installed in editable mode) finds the
    # models/ beside its own keras_bninit, under both names.
    for name in ("keras_bninit", "models"):
        shutil.copytree(
            os.path.join(ROOT, name),
            tmp_path / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    code = (
        "import keras_bninit.models as zoo, models\n"
        "print(zoo.__file__)\n"
        "print(models is zoo, models.resnet is zoo.resnet)\n"
    )
    result = run_python("-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        str(tmp_path / "models" / "__init__.py"),
        "True True",
    ]
