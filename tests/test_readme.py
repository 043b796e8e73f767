"""README.md as a user runs it, in a fresh copy of the repository.

The Quickstart's `python train.py` (the demo sweep, runs/demo) runs once in
the copy; then every ```python block of the README runs alone, each in a
new process there, and the README's shell commands that work offline
on a CPU run as written. Commands that need a GPU, the network, a data set
that is not here or hours are listed in `SKIPPED` with the reason, or in
`STAND_INS` with the cheaper command that checks them instead. Nothing here
touches the network.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# Not copied: environments, results, caches, build outputs.
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache",
    "*.egg-info", "build", "dist", ".whl",
)  # fmt: skip

# README shell commands that are not run, and why.
SKIPPED = {
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e "
    '".[tensorflow]" && python train.py': "installs from the network; the "
    "`demo` fixture runs its `python train.py`",
    'pip install -e ".[test]" && python -m pytest -q': "the whole test "
    "suite, of which this test is a part",
    "KERAS_BACKEND=jax python -m pytest -q -m core && KERAS_BACKEND=torch "
    "python -m pytest -q -m core": "the core suite on JAX and PyTorch "
    "(.ci/run runs it)",
    "python train.py run --dataset cifar10 --model resnet18 --gamma 0.1 "
    "--gamma-lr-divisor 100 --lr 0.1 --epochs 180 --seed 1 --out runs/": (
        "CIFAR-10 (a download) and 180 epochs (a GPU)"
    ),
    "python train.py run --dataset cifar10 --gamma 1 --gamma-lr-divisor 1": (
        "CIFAR-10 (a download) and 180 epochs (a GPU)"
    ),
    "python train.py sweep --preset table1a": "360 runs on CIFAR-10 (GPUs)",
}

# README shell commands too long for a test, and the command run instead.
STAND_INS = {
    # 90 runs of 10 epochs: check the arguments and the grid.
    "python train.py sweep --dataset digits --model resnet8 --gamma 0.05 0.1 "
    "--lr 0.1 0.01 --seeds 1-15 --epochs 10 --out runs/my-sweep": (
        "python train.py sweep --dataset digits --model resnet8 --gamma 0.05 "
        "0.1 --lr 0.1 0.01 --seeds 1-15 --epochs 10 --out runs/my-sweep "
        "--dry-run"
    ),
    # 10 runs of 3 epochs: check the arguments, the design and the plan.
    "python train.py sweep --dataset digits --model resnet8 --epochs 3 --lr "
    "0.01 --gamma 0.05 --seeds 1-15 --sequential --out runs/sequential": (
        "python train.py sweep --dataset digits --model resnet8 --epochs 3 "
        "--lr 0.01 --gamma 0.05 --seeds 1-15 --sequential --out "
        "runs/sequential --dry-run"
    ),
    # runs/my-sweep is not trained (above): the same report of the demo.
    "python train.py report runs/my-sweep --decision holm": (
        "python train.py report runs/demo --decision holm"
    ),
}

# What each command run prints (a substring of stdout), and the test
# accuracy the README quotes for it (a sweep's: its first run's), checked
# to +/- TOLERANCE (CPU kernels differ between machines; a stale number
# differs by more).
EXPECTED = {
    "python train.py run --dataset digits --model resnet18 --epochs 3 "
    "--precise-bn": ("test accuracy", 0.981),
    "python train.py sweep --preset table1a --dry-run": (
        "360 runs, 64,800 epochs, 2,916,000,000 training images",
        None,
    ),
    STAND_INS[
        "python train.py sweep --dataset digits --model resnet8 --gamma 0.05 "
        "0.1 --lr 0.1 0.01 --seeds 1-15 --epochs 10 --out runs/my-sweep"
    ]: ("90 runs, 900 epochs", None),
    STAND_INS[
        "python train.py sweep --dataset digits --model resnet8 --epochs 3 "
        "--lr 0.01 --gamma 0.05 --seeds 1-15 --sequential --out "
        "runs/sequential"
    ]: ("sequential: looks at 5, 10, 15 of seeds 1-15; at most 30 runs", None),
    "python train.py report runs/demo --decision holm": (
        "configuration    mean ± std  n  ours - BASE [95% CI]",
        None,
    ),
    'KERAS_BACKEND=jax python -c "import keras_bninit.models as m; '
    "print(m.create_model('resnet18'))\"": ("Functional", None),
    "python train.py run --dataset digits --model resnet8 --epochs 3 --seed 1 "
    "--precise-bn --backend jax": ("test accuracy", 0.869),
    "python train.py sweep --dataset digits --model resnet8 --gamma 0.1 "
    "--seeds 1 --epochs 3 --precise-bn --no-base --backend torch --out "
    "runs/torch-check": ("test accuracy", 0.869),
}
TOLERANCE = 0.05


def _readme():
    with open(README, encoding="utf-8") as f:
        return f.read()


def _blocks(language):
    return re.findall(
        rf"^```{language}\n(.*?)^```", _readme(), flags=re.S | re.M
    )


def _commands():
    """The README's shell commands, continuation lines joined, comments
    dropped."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def _env():
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONUNBUFFERED="1",
        # `python` in a command is this interpreter.
        PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"],
        # Anything that tried the network would fail here, not download.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    env.pop("PYTHONPATH", None)
    return env


def _run(command, cwd, timeout=900):
    out = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"{command}\nexit {out.returncode}\n{out.stdout[-3000:]}\n"
        f"{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh copy of the repository: tracked and new files, no results."""
    copy = tmp_path_factory.mktemp("readme") / "repo"
    shutil.copytree(ROOT, copy, ignore=IGNORED)
    return copy


@pytest.fixture(scope="module")
def demo(repo):
    """The Quickstart: `python train.py` in the copy (writes runs/demo)."""
    out = _run("python train.py", repo)
    (repo / "demo.out").write_text(out.stdout)
    return out.stdout


@pytest.mark.slow
def test_quickstart_demo_prints_the_table_and_report(demo, repo):
    for line in (
        "[sweep] 16 runs: 0 already done, 16 ran (0 failed)",
        "configuration    mean ± std  n  ours - BASE [95% CI]",
        "report: runs/demo/report/report.md, runs/demo/report/report.tex, "
        "runs/demo/report/report.csv",
        "plot: runs/demo/report/accuracy_vs_gamma-digits-resnet8.png",
        "plot: runs/demo/report/paired_difference-digits-resnet8.png",
    ):
        assert line in demo
    assert (repo / "runs/demo/results.sqlite").is_file()
    # The means the README quotes, within a point (the demo is not
    # --deterministic, so another machine may differ in the last digits).
    row = r"^({}, lr=0\.1)\s+(\d+\.\d+) ± (\d+\.\d+)\s+8 "
    for name in ("c=0\\.1", "BASE"):
        quoted = re.search(row.format(name), _readme(), flags=re.M)
        printed = re.search(row.format(name), demo, flags=re.M)
        assert quoted and printed, name
        assert abs(float(quoted.group(2)) - float(printed.group(2))) <= 1.0


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(i, marks=[pytest.mark.slow], id=f"block{i + 1}")
        for i in range(len(_blocks("python")))
    ],
)
def test_each_python_block_runs_alone(index, repo, request):
    """Each block as a user pastes it: alone, in a fresh interpreter. A
    block that needs the demo's results says so in its first comment."""
    block = _blocks("python")[index]
    first = block.lstrip().splitlines()[0]
    if "runs/demo" in block:
        assert first.startswith("# Needs the demo's results"), first
        request.getfixturevalue("demo")
    script = repo / f"readme_block{index + 1}.py"
    script.write_text(block)
    out = _run(f"{sys.executable} {script}", repo, timeout=1200)
    if "run_experiment(" not in block:
        return
    # The Python API's run, RunConfig(..., precise_bn=200): what it prints
    # and what the README says it prints.
    (quoted,) = re.findall(
        r'print\(record\["test_accuracy"\].*# (0\.\d+)', block
    )
    printed = re.search(r"^(0\.\d+) \S+digits-resnet8", out.stdout, re.M)
    assert printed, out.stdout[-3000:]
    assert abs(float(printed.group(1)) - float(quoted)) <= TOLERANCE


def test_every_shell_command_is_run_or_listed():
    commands = _commands()
    unknown = [
        c
        for c in commands
        if c not in SKIPPED and c not in STAND_INS and c not in EXPECTED
    ]
    assert not unknown, f"classify these README commands: {unknown}"
    stale = [c for c in (*SKIPPED, *STAND_INS) if c not in commands]
    assert not stale, f"no longer in README.md: {stale}"


def _runnable():
    params = []
    for command in _commands():
        if command in SKIPPED:
            continue
        command = STAND_INS.get(command, command)
        # Dry runs and the import check take seconds; the rest trains.
        quick = "--dry-run" in command or " -c " in command
        marks = [] if quick else [pytest.mark.slow]
        for backend in ("jax", "torch"):
            if backend in command and importlib.util.find_spec(backend) is None:
                marks.append(pytest.mark.skip(reason=f"{backend} missing"))
        params.append(pytest.param(command, marks=marks, id=command[:60]))
    return params


@pytest.mark.parametrize("command", _runnable())
def test_shell_command(command, repo, request):
    if "runs/demo" in command:
        request.getfixturevalue("demo")
    out = _run(command, repo)
    text, accuracy = EXPECTED[command]
    assert text in out.stdout, out.stdout[-3000:]
    if accuracy is not None:
        printed = re.findall(r"test accuracy (\d\.\d+)", out.stdout)
        assert printed, out.stdout[-3000:]
        assert abs(float(printed[0]) - accuracy) <= TOLERANCE, printed


@pytest.mark.slow
def test_short_run_warning_as_shown(repo):
    """The warning and result lines the README shows for a short run."""
    shown = re.search(
        r"^\$ (python train\.py run [^\n]*)\n(train\.py: warning: [^\n]*)\n"
        r".*?^val accuracy (\S+) \(best epoch (\d+)\), test accuracy (\S+),",
        _readme(),
        flags=re.S | re.M,
    )
    assert shown, "README.md shows no short run"
    command, warning, val, best, test = shown.groups()
    out = _run(command + " --out runs/short", repo)
    assert warning in out.stderr + out.stdout
    result = re.search(
        r"val accuracy (\S+) \(best epoch (\d+)\), test accuracy (\S+),",
        out.stdout,
    )
    assert result, out.stdout[-3000:]
    assert result.group(2) == best
    assert abs(float(result.group(1)) - float(val)) <= TOLERANCE
    assert abs(float(result.group(3)) - float(test)) <= TOLERANCE
