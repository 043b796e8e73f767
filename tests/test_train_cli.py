"""train.py as a user runs it: subprocesses, exit codes, files."""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _train(*args, check=True):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=900,
    )
    if check:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


def _result(out_dir):
    (path,) = glob.glob(os.path.join(out_dir, "*", "result.json"))
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--gamma", "0"], "gamma=0.0"),
        (["run", "--gamma", "-1"], "gamma=-1.0"),
        (["run", "--gamma-lr-divisor", "0"], "gamma_lr_divisor=0.0"),
        (["run", "--lr", "0"], "lr=0.0"),
        (["run", "--epochs", "0"], "epochs=0"),
        (["run", "--batch-size", "0"], "batch_size=0"),
        (["run", "--seed", "-2"], "seed=-2"),
        (["run", "--seed", "one"], "invalid int value: 'one'"),
        (["run", "--dataset", "mnist"], "'mnist'. Valid: caltech_birds2011"),
        (["run", "--model", "vgg"], "'vgg'; valid: mobilenet_v2"),
        (["run", "--bn", "ln"], "'ln' (choose from 'standard', 'a1', 'a2'"),
        (["run", "--input-norm", "x"], "'x' (choose from 'bn', 'fixed'"),
        (["run", "--ablation", "both"], "'both' (choose from 'init-only'"),
        (["run", "--precise-bn", "-1"], "precise_bn=-1"),
        (["run", "--dataset", "cars196"], "downloads/manual"),
        (["run", "--dataset", "cifar10"], "cannot be loaded offline"),
        (["sweep", "--preset", "table9"], "'table9' (choose from 'table1a'"),
        (["sweep", "--seeds", "1-x", "--gamma", "0.1"], "'1-x'"),
        (["report", "nowhere"], "holds no sweep results"),
        (["run", "--input", "disk"], "'disk' (choose from 'tfdata', 'memory'"),
        (["run", "--precision", "fp8"], "'fp8' (choose from 'float32'"),
        (["run", "--steps-per-execution", "0"], "steps_per_execution=0"),
        (
            ["run", "--steps-per-execution", "2", "--backend", "torch"],
            "not supported by Keras on the torch backend",
        ),
        (["run", "--synthetic-size", "100"], "synthetic_size=100, dataset"),
        (
            ["run", "--dataset", "synthetic", "--synthetic-size", "5"],
            "synthetic_size must be >= 20",
        ),
        (["bogus"], "invalid choice: 'bogus'"),
        (["run", "--dataset", "/etc"], "'/etc' is not an image data set"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    extra = ["--out", str(out)] if args[0] in ("run", "sweep") else []
    result = _train(*args, *extra, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_output_path_that_is_a_file(tmp_path):
    path = tmp_path / "taken"
    path.write_text("")
    result = _train("run", "--out", str(path), check=False)
    assert result.returncode == 2 and "is a file" in result.stderr


def test_dry_run_lists_preset():
    result = _train("sweep", "--preset", "table1a", "--dry-run")
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "360 runs, 64,800 epochs, 2,916,000,000 training images"
    assert lines[0].startswith("cifar10-resnet18-standard-lr0.1-c0.01-a100-s1-")


def _run_args(out, epochs):
    return (
        "run", "--dataset", "digits", "--model", "resnet8", "--epochs",
        str(epochs), "--deterministic", "--seed", "3", "--quiet", "--out",
        str(out),
    )  # fmt: skip


@pytest.mark.slow
def test_same_seed_same_numbers_and_kill_resume(tmp_path):
    first, second, killed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _train(*_run_args(first, 5))
    _train(*_run_args(second, 5))
    a, b = _result(first), _result(second)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["history"]["val_loss"] == b["history"]["val_loss"]

    process = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"), *_run_args(killed, 5)],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not glob.glob(str(killed / "*" / "backup" / "ckpt-*")):
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not glob.glob(str(killed / "*" / "result.json"))
    _train(*_run_args(killed, 5))
    c = _result(killed)
    assert c["test_accuracy"] == a["test_accuracy"]
    assert c["history"]["val_loss"] == a["history"]["val_loss"]
    assert c["best_epoch"] == a["best_epoch"]


def test_demo_sweep_short_mode_then_report_and_plot(tmp_path):
    sweep = tmp_path / "demo"
    # The embedded default (`python train.py`) is this preset with 8 seeds
    # and 6 epochs of batch 32; CI runs it shorter.
    result = _train(
        "sweep", "--preset", "demo", "--seeds", "1-2", "--epochs", "1",
        "--out", str(sweep),
    )  # fmt: skip
    assert "[sweep] 4 runs: 0 already done, 4 ran (0 failed)" in result.stdout
    assert "BASE" in result.stdout and "p (t-test)" in result.stdout
    for name in ("report.md", "report.tex", "report.csv"):
        assert (sweep / "report" / name).is_file()
    assert glob.glob(str(sweep / "report" / "*.png"))
    again = _train("sweep", "--preset", "demo", "--seeds", "1-2", "--epochs",
                   "1", "--out", str(sweep), "--quiet")  # fmt: skip
    assert again.stdout == ""
    report = _train("report", str(sweep))
    assert "c=0.1" in report.stdout

    run = tmp_path / "diag"
    _train("run", "--model", "resnet8", "--epochs", "1", "--diagnostics",
           "--quiet", "--out", str(run))  # fmt: skip
    (run_dir,) = glob.glob(str(run / "*"))
    plots = _train("plot", run_dir).stdout.split()
    assert plots and all(
        p.endswith(".png") and os.path.isfile(p) for p in plots
    )


_HELP_IMPORTS = """
import sys
import train
for argv in (["--help"], ["run", "--help"], ["sweep", "--help"]):
    try:
        train.main(argv)
    except SystemExit as exit:
        assert exit.code == 0, exit.code
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch")
               if m in sys.modules)
print("loaded:", heavy)
"""


def test_help_answers_before_tensorflow_and_keras_load():
    start = time.perf_counter()
    result = _train("--help")
    elapsed = time.perf_counter() - start
    assert "no arguments" in result.stdout and "--preset demo" in result.stdout
    assert elapsed < 2.0, elapsed  # importing TensorFlow alone takes ~3 s
    out = subprocess.run(
        [sys.executable, "-c", _HELP_IMPORTS],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("loaded: []")


def test_help_lists_choices_and_defaults_of_every_option():
    import train

    parser = train._parser()
    subparsers = parser._subparsers._group_actions[0].choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
    text = subparsers["run"].format_help()
    for expected in (
        "resnet8",
        "caltech_birds2011",
        "iebn-",
        "offline",
        "init-only",
        "(default: 0.1;",  # c
        "(default: 100;",  # a
        "--seed SEED           the run seed n (default: 1)",
        "--precise-bn [N]",
    ):
        assert expected in text, expected
    assert "table1a" in subparsers["sweep"].format_help()


def test_options_and_choices_come_from_the_config_metadata():
    import train
    from keras_bninit.harness import config

    run = train._parser()._subparsers._group_actions[0].choices["run"]
    actions = {a.dest: a for a in run._actions if a.help != "==SUPPRESS=="}
    for field in config.fields():
        cli = field.metadata["cli"]
        if cli is False:
            continue
        action = actions[field.name]
        assert field.metadata["help"] in action.help, field.name
        if field.metadata["choices"] is not None:
            assert tuple(action.choices) == field.metadata["choices"]
    # The store key is derived from the same metadata.
    assert config.NON_RESULT_FIELDS == {
        f.name for f in config.fields(result=False)
    }


def test_the_reference_forms_by_default_and_keras_semantics():
    import train

    def config(*argv):
        return train._run_config(train._parser().parse_args(["run", *argv]))

    forms = ("sgd", "moving_variance", "scale_lr_floor")
    assert [getattr(config(), f) for f in forms] == [
        "torch",
        "unbiased",
        "per_group",
    ]
    keras = config("--keras-semantics")
    assert [getattr(keras, f) for f in forms] == ["keras", "biased", "divided"]
    mixed = config("--keras-semantics", "--sgd", "torch")
    assert [getattr(mixed, f) for f in forms] == ["torch", "biased", "divided"]
    assert config("--precise-bn").precise_bn == 200
    assert config("--precise-bn", "50").precise_bn == 50
    assert config("--torch-parity").sgd == "torch"  # 0.2's option


def test_verbosity_plain_lines_when_redirected():
    import train

    def verbose(*argv):
        args = train._parser().parse_args(["run", *argv])
        return train._run_config(args).verbose

    assert not sys.stdout.isatty()  # pytest captures the output
    assert verbose() == 2  # one line per epoch, no progress bar
    assert verbose("--verbose", "1") == 1
    assert verbose("--quiet") == 0
    result = _train("run", "--verbose", "3", check=False)
    assert result.returncode == 2
    assert "argument --verbose: invalid choice: 3" in result.stderr


def test_input_precision_and_steps_reach_the_config():
    import train

    def config(*argv):
        return train._run_config(train._parser().parse_args(["run", *argv]))

    default = config()
    # The TensorFlow backend's default input path is tf.data (README).
    assert default.input == "tfdata" and default.precision == "float32"
    assert default.steps_per_execution == 1
    chosen = config(
        "--input",
        "memory",
        "--precision",
        "mixed_bfloat16",
        "--steps-per-execution",
        "4",
        "--dataset",
        "synthetic",
        "--synthetic-size",
        "300",
    )
    assert (chosen.input, chosen.precision) == ("memory", "mixed_bfloat16")
    assert chosen.steps_per_execution == 4 and chosen.synthetic_size == 300
    assert chosen.model == "resnet18"  # CIFAR-shaped, CIFAR-10's model
    # Input path and precision change a run's identity; steps per
    # execution does not (same steps, same numbers).
    assert config("--input", "memory").key() != default.key()
    assert config("--precision", "mixed_float16").key() != default.key()
    assert config("--steps-per-execution", "3").key() == default.key()


def _one_error_line(result, message, status=2):
    assert result.returncode == status, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-2000:]
    assert message in lines[0]
    assert "Traceback" not in result.stderr


GRID = ["sweep", "--dataset", "digits", "--gamma", "0.1"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--seed", "99999999999999999999"], "< 2**31"),
        ([*GRID, "--seeds", "2147483648"], "Seeds must be < 2**31"),
        ([*GRID, "--seeds", "1-100000000", "--dry-run"], "Too many seeds"),
        ([*GRID, "--seeds", ""], "--seeds is empty"),
        ([*GRID, "--seeds", " "], "--seeds is empty"),
        (["run", "--activation-std", "-1"], "activation_std=-1.0"),
        (["run", "--activation-std", "nan"], "activation_std=nan"),
        (["run", "--gamma", "1e39"], "representable in float32"),
        (["run", "--lr", "1e-50"], "lr=1e-50"),
        ([*GRID, "--row-key", "colour", "--dry-run"], "--row-key 'colour'"),
        # Sizes that pass the type check but no sane bound (issue 28).
        (["run", "--batch-size", str(2**63)], "batch_size=9223372036854775808"),
        (["run", "--batch-size", str(2**31)], "must be <= 65,536"),
        (["run", "--steps-per-execution", str(2**31)], "must be <= 65,536"),
        (
            ["run", "--dataset", "synthetic", "--synthetic-size", str(2**40)],
            "synthetic_size must be <= ",
        ),
        # ... and sizes the data cannot serve, found once it is loaded.
        (["run", "--batch-size", "5000"], "exceeds the 1293 training"),
        (
            ["run", "--steps-per-execution", "50", "--batch-size", "64"],
            "exceeds the 21 steps of an epoch",
        ),
    ],
)
def test_bounds_exit_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "out"
    start = time.perf_counter()
    result = _train(*args, "--out", str(out), check=False)
    _one_error_line(result, message)
    assert time.perf_counter() - start < 60  # no hang on a huge range
    assert not out.exists()


def test_a_batch_the_data_cannot_serve_stores_nothing_in_a_sweep(tmp_path):
    out = tmp_path / "sweep"
    result = _train(*GRID, "--seeds", "1", "--batch-size", "5000", "--out",
                    str(out), check=False)  # fmt: skip
    _one_error_line(result, "batch_size=5000 exceeds the 1293 training")
    records = []
    if (out / "results.sqlite").exists():
        from keras_bninit.harness.store import ResultStore

        with ResultStore(str(out)) as store:
            records = store.records(status=None)
            assert store.claims() == {}
    assert records == []  # not stored as failed


def test_report_row_key_is_a_config_field(tmp_path):
    result = _train("report", str(tmp_path), "--row-key", "colour", check=False)
    _one_error_line(result, "valid: the configuration fields dataset")


@pytest.mark.parametrize("command", [["run"], GRID])
def test_out_inside_a_file_is_refused(tmp_path, command):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "runs"
    result = _train(*command, "--epochs", "1", "--out", str(out), check=False)
    _one_error_line(result, "is inside the file")


@pytest.mark.parametrize("damage", [b"", b"SQLite format 3\0" + b"\xff" * 200])
def test_damaged_store_exits_2_naming_it(tmp_path, damage):
    store = tmp_path / "results.sqlite"
    store.write_bytes(b"not a database, " * 64 if not damage else damage)
    for args in (
        [*GRID, "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)],
        ["report", str(tmp_path)],
    ):
        result = _train(*args, check=False)
        _one_error_line(result, f"'{store}' is not a results store")
    assert sorted(os.listdir(tmp_path)) == ["results.sqlite"]


def _odd_sweep(sweep, odd=None):
    """A finished sweep folder (records put directly, no training): BASE
    and c = 0.1 at seeds 1-3; `odd` replaces c = 0.1's seed-2 accuracy.
    Returns the store's path and c = 0.1's config key."""
    from keras_bninit.harness.store import ResultStore, config_key

    def config(seed, gamma):
        return {"dataset": "digits", "model": "resnet8", "lr": 0.1,
                "gamma": gamma, "gamma_lr_divisor": 1 + 99 * (gamma != 1),
                "epochs": 1, "seed": seed}  # fmt: skip

    with ResultStore(str(sweep)) as store:
        for seed in (1, 2, 3):
            for gamma in (1.0, 0.1):
                accuracy = 0.8 + seed / 100 + (gamma != 1) / 50
                if odd is not None and (seed, gamma) == (2, 0.1):
                    accuracy = odd
                store.put({"config": config(seed, gamma), "status": "ok",
                           "test_accuracy": accuracy})  # fmt: skip
    return sweep / "results.sqlite", config_key(config(2, 0.1))


def _listing(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("odd", ["empty store", "accuracy 7.5", "sweep.json"])
def test_report_on_an_odd_store_exits_2_naming_it_and_writes_nothing(
    tmp_path, odd
):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    if odd == "empty store":  # was made a 28 KB store, then "no runs"
        store = sweep / "results.sqlite"
        store.write_bytes(b"")
        message = f"'{store}' is an empty file (0 bytes), not a results store"
    elif odd == "accuracy 7.5":  # was "... pass bounds=None ..."
        store, key = _odd_sweep(sweep, odd=7.5)
        message = (
            f"{store} row config_key={key} seed=2: test_accuracy=7.5 is not "
            "an accuracy; valid: 0 <= test_accuracy <= 1"
        )
    else:  # a torn sweep.json: was a JSONDecodeError naming no file
        _odd_sweep(sweep)
        (sweep / "sweep.json").write_text('{"row_key": "ga')
        message = f"'{sweep / 'sweep.json'}' cannot be read (Unterminated"
    before = _listing(sweep)
    result = _train("report", str(sweep), check=False)
    _one_error_line(result, message)
    assert "bounds=None" not in result.stderr
    assert _listing(sweep) == before  # no report/, the store unchanged


def test_report_warns_naming_each_value_and_row_it_leaves_out(tmp_path):
    import sqlite3

    sweep = tmp_path / "sweep"
    store, key = _odd_sweep(sweep, odd=float("nan"))
    con = sqlite3.connect(store)  # seed 3 of c = 0.1: a truncated record
    con.execute("UPDATE runs SET record = substr(record, 1, 30) "
                "WHERE config_key = ? AND seed = 3", (key,))  # fmt: skip
    con.commit()
    con.close()
    result = _train("report", str(sweep))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in result.stderr
    assert lines[0].startswith(
        f"train.py: warning: {store} row config_key={key} seed=3 holds a "
        "record that is not valid JSON ("
    )
    assert lines[1] == (
        f"train.py: warning: {store} row config_key={key} seed=2: "
        "test_accuracy=nan is not a finite number; left out of the means "
        "and tests, counted as failed"
    )
    with open(sweep / "report" / "report.csv", encoding="utf-8") as f:
        rows = {r["is_base"]: r for r in csv.DictReader(f)}
    assert rows["False"]["n_ours"] == "1" and rows["False"]["n_failed"] == "1"
    assert rows["True"]["n_ours"] == "3"


@pytest.mark.parametrize(
    "error, shown",
    [
        ("OSError(28, 'No space left on device')", "No space left on device"),
        ("PermissionError(13, 'Permission denied')", "Permission denied"),
        ("MemoryError('host memory')", "MemoryError: host memory"),
    ],
)
def test_environment_error_stops_the_sweep_with_status_1(
    tmp_path, error, shown
):
    # The model zoo's builder fails as the machine would; train.py itself
    # runs unchanged.
    code = textwrap.dedent(
        f"""
        import sys
        import train
        train._import_quietly()  # TensorFlow's start-up notes muted
        from keras_bninit import models
        def build(*args, **kwargs):
            raise {error}
        models.build = build
        sys.exit(train.main(sys.argv[1:]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *GRID, "--no-base", "--seeds", "1-2"]
        + ["--epochs", "1", "--quiet", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=900,
    )
    _one_error_line(result, "train.py: stopped by the environment: run ", 1)
    assert shown in result.stderr and "rerun the same command" in result.stderr
    from keras_bninit.harness.store import ResultStore

    with ResultStore(tmp_path) as store:  # nothing stored, nothing claimed
        assert len(store) == 0 and store.claims() == {}


def test_a_process_of_its_own_imports_without_collections_then_freezes(
    monkeypatch,
):
    import gc

    from keras_bninit.harness import cli, cli_process

    at_exit = []
    monkeypatch.setattr(cli_process.atexit, "register", at_exit.append)
    frozen = gc.get_freeze_count()
    with cli._collector_paused(False):  # main() called by a caller
        assert gc.isenabled()
    assert gc.get_freeze_count() == frozen and at_exit == []
    try:
        with cli._collector_paused(True):  # train.py, keras-bninit
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)
        # What the command makes is frozen at exit, before the last
        # collection would walk it.
        assert at_exit == [gc.freeze]
    finally:
        gc.unfreeze()


def test_a_logged_run_has_plain_lines_and_help_defaults_are_the_runs(tmp_path):
    import re

    import train
    from keras_bninit.harness import config as config_module

    result = _train(
        "run", "--dataset", "digits", "--model", "resnet8", "--epochs", "2",
        "--precise-bn", "--out", str(tmp_path),
    )  # fmt: skip
    out = result.stdout
    assert "\r" not in out and "\x1b" not in out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    assert re.match(
        r"epoch 1/2, loss \d\.\d{4}, accuracy \d\.\d{4}, val_loss \d+\.\d{4}, "
        r"val_accuracy \d\.\d{4}, lr 0\.1, \d+\.\d\d s$",
        epochs[0],
    ), epochs[0]
    assert re.search(r"test accuracy \d\.\d{4}", out.splitlines()[-2])
    # Every default --help states is the one the run used.
    written = _result(tmp_path)["config"]
    run = train._parser()._subparsers._group_actions[0].choices["run"]
    stated = 0
    for action in run._actions:
        match = re.search(r"\(default: ([^;)]+)\)$", action.help or "")
        field = action.dest
        # Given above, or not this data set's: data_dir (tfds's own),
        # synthetic_size (for dataset synthetic).
        given = ("dataset", "model", "epochs", "precise_bn", "out")
        given += ("data_dir", "synthetic_size")
        if not match or field not in config_module.field_names():
            continue
        if field in given:
            continue
        text = match[1]
        # "the data set's: 15 digits, ..."; "1 on a terminal, 2 when the
        # output is redirected" (this run's output is a pipe).
        special = re.search(
            r"(\S+) digits|(\S+) when the output is|(\S+) on tensorflow", text
        )
        expected = next(g for g in special.groups() if g) if special else text
        value = written[field]
        try:
            assert float(expected) == float(value), (field, text, value)
        except ValueError:
            assert expected == str(value), (field, text, value)
        stated += 1
    assert stated >= 10


def test_sigterm_stops_a_sweep_like_ctrl_c_and_a_rerun_finishes(tmp_path):
    import signal

    from keras_bninit.harness.store import ResultStore

    sweep = tmp_path / "sweep"
    argv = [
        sys.executable, os.path.join(ROOT, "train.py"), "sweep",
        "--dataset", "digits", "--model", "resnet8", "--gamma", "0.1",
        "--seeds", "1", "--epochs", "3", "--no-base", "--out", str(sweep),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV, cwd=ROOT,
    )  # fmt: skip
    for line in proc.stdout:  # a batch scheduler's SIGTERM mid-training
        if line.startswith("epoch 1/3"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "train.py: terminated (SIGTERM); nothing half-done is stored, rerun "
        "the same command to resume"
    )
    with ResultStore(sweep) as store:
        assert store.records(status=None) == [] and store.claims() == {}
    rerun = _train(*argv[2:])
    assert "[sweep] 1 runs: 0 already done, 1 ran (0 failed)" in rerun.stdout
    with ResultStore(sweep) as store:
        assert [r["status"] for r in store.records(status=None)] == ["ok"]


# The arguments' mistakes, answered before Keras and any backend load
# (issue 29): each argv, its status-2 line, and the heavy modules loaded.
_ARGUMENT_ERRORS = """
import contextlib, io, json, sys
import importlib.util

real = importlib.util.find_spec
missing = set(sys.argv[1].split(",")) - {""}
importlib.util.find_spec = (  # a venv without these backends
    lambda name, *a: None if name in missing else real(name, *a)
)
import train

results = []
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            train.main(argv)
            code = 0
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch")
               if m in sys.modules)
print(json.dumps([results, heavy]))
"""


def _argument_errors(cases, missing=()):
    out = subprocess.run(
        [sys.executable, "-c", _ARGUMENT_ERRORS, ",".join(missing),
         json.dumps([argv for argv, _ in cases])],
        capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    for (argv, message), (code, err) in zip(cases, results):
        assert code == 2, (argv, err)
        (line,) = err.strip().splitlines()
        assert line.startswith("train.py: error: ") and message in line, (
            argv,
            line,
        )
    return heavy


def test_argument_errors_answer_before_keras_loads(tmp_path):
    out = ["--out", str(tmp_path / "out")]
    grid = ["sweep", "--dataset", "digits", "--gamma", "0.1", *out]
    cases = [
        (["run", "--gamma", "-1", *out], "gamma=-1.0"),
        ([*grid, "--seeds", "5-1"], "The seed range '5-1' is reversed"),
        ([*grid, "--seeds", "1-3,9-7"], "give 7-9"),
        (["run", "--model", "resnet9", *out], "unknown model 'resnet9'"),
        (["run", "--dataset", "nope", *out], "Unknown data set 'nope'"),
        (["run", "--batch-size", str(2**31), *out], "must be <= 65,536"),
        ([*grid, "--lr", "0"], "lr=0.0"),
        (
            [*grid, "--sequential", "--looks", "5,10,20"],
            "--looks '5,10,20': the last look must equal the number of seeds",
        ),
        ([*grid, "--looks", "5,10,15"], "--looks needs --sequential"),
        (["report", str(tmp_path)], "holds no sweep results (results.sqlite)"),
        (["report", str(tmp_path), "--row-key", "x"], "--row-key 'x'"),
        (["plot", str(tmp_path / "none")], "is not a run directory"),
    ]
    assert _argument_errors(cases) == []  # neither Keras nor a backend
    assert not (tmp_path / "out").exists()


def test_a_missing_backend_names_its_install(tmp_path):
    out = ["--out", str(tmp_path / "out")]
    hint = 'is not installed: pip install "keras_bninit[{}]"'
    cases = [
        (["run", "--backend", "torch", *out], hint.format("torch")),
        (["run", "--backend", "jax", *out], hint.format("jax")),
    ]
    # TensorFlow is here: the others are named one by one.
    assert _argument_errors(cases, missing=("torch", "jax")) == []
    # None is: the default backend's install, and the others'.
    none = [
        (["run", *out], 'no Keras backend is installed: pip install "keras'),
        (["run", "--backend", "jax", *out], '"keras_bninit[jax]" (or [tens'),
    ]
    assert _argument_errors(none, ("torch", "jax", "tensorflow")) == []
    tfdata = [
        (
            ["run", "--backend", "jax", "--input", "tfdata", *out],
            "--input tfdata needs TensorFlow, which is not installed",
        )
    ]
    assert _argument_errors(tfdata, missing=("tensorflow",)) == []
    assert not (tmp_path / "out").exists()
