"""Every model on the current Keras backend: build, one training step with
ParamGroupOptimizer, `.keras` round trip (CI runs this module on TensorFlow,
JAX and PyTorch). Plus the layout rules: the core never imports TensorFlow,
the harness or `models`; `models` never imports the harness; with TensorFlow
unimportable the core and `models` still load on JAX.
"""

import ast
import json
import os
import pathlib
import textwrap

import keras
import numpy as np
import pytest
from _backend import BACKEND, run_python, to_numpy
from test_models import EXPECTED_PARAMS, LARGE, trainable_params

import keras_bninit
from keras_bninit import models

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("name", models.available())
def test_model_trains_and_round_trips(name, tmp_path):
    if BACKEND == "tensorflow" and name in LARGE:
        # On TensorFlow test_models trains (every formulation) and
        # round-trips these already; this keeps the CI run short.
        pytest.skip("covered on TensorFlow by test_models")
    keras_bninit.set_seed(0, deterministic=False)
    # 32x32 (the small-input variants), 3 classes, batch 2: one step is
    # enough to show the graph, gradients and optimizer work.
    model = models.build(
        name,
        num_classes=3,
        input_shape=(32, 32, 3),
        bn_gamma=0.1,
        input_bn=True,
    )
    assert trainable_params(model) == EXPECTED_PARAMS[name](3, True) + 3
    assert all("." not in layer.name for layer in model.layers)
    optimizer = keras_bninit.ParamGroupOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9)
    )
    # One step: compiling it (XLA, torch.compile) takes far longer than
    # running it eagerly, except for the smallest model (the compiled path).
    compiled = name == "resnet8" and BACKEND != "torch"
    model.compile(optimizer, LOSS, jit_compile=compiled, run_eagerly=False)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2, 32, 32, 3)).astype("float32")
    y = np.array([0, 2])
    gamma = model.get_layer("input_bn").gamma
    kernel = model.trainable_variables[1]  # the first convolution
    before = gamma.numpy(), kernel.numpy()
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert int(optimizer.iterations.numpy()) == 1
    assert not np.array_equal(gamma.numpy(), before[0])
    assert not np.array_equal(kernel.numpy(), before[1])
    expected = to_numpy(model(x, training=False))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)), expected, rtol=1e-5, atol=1e-6
    )
    assert [layer.name for layer in loaded.layers] == [
        layer.name for layer in model.layers
    ]
    assert isinstance(loaded.optimizer, keras_bninit.ParamGroupOptimizer)
    assert int(loaded.optimizer.iterations.numpy()) == 1


def test_repvgg_reparameterize_on_this_backend():
    rng = np.random.default_rng(0)
    model = models.build(
        "repvgg_a0", num_classes=3, input_shape=(16, 16, 3), input_bn=True
    )
    for layer in model.layers:  # trained-looking statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.2, c))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, c))
    fused = models.repvgg.reparameterize(model)
    x = rng.uniform(size=(2, 16, 16, 3)).astype("float32")
    expected = to_numpy(model(x, training=False))
    np.testing.assert_allclose(
        to_numpy(fused(x, training=False)),
        expected,
        atol=1e-5 * np.abs(expected).max(),
    )
    assert "stage1_0_rbr_reparam" in [layer.name for layer in fused.layers]


# ---------------------------------------------------------------------------
# The import graph
# ---------------------------------------------------------------------------


def _imports(path, top_level_only=False):
    """The modules `path` imports, with `from a import b` also as `a.b`;
    everywhere in the file (lazy imports in functions too), or only the
    statements run at import time (module level, `if`/`try` blocks)."""
    tree = ast.parse(path.read_text())
    if top_level_only:
        nodes, todo = [], list(tree.body)
        while todo:
            node = todo.pop()
            nodes.append(node)
            if isinstance(node, (ast.If, ast.Try)):
                todo.extend(ast.iter_child_nodes(node))
    else:
        nodes = ast.walk(tree)
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the package
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path):
    """The dotted name of a project file; `models/` installs as
    `keras_bninit.models`."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "models":
        parts = ("keras_bninit", *parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _core_modules():
    return sorted((ROOT / "keras_bninit").glob("*.py"))


def _imports_forbidden(path, forbidden):
    found = set()
    for name in _imports(path):
        for prefix in forbidden:
            if name == prefix or name.startswith(prefix + "."):
                found.add(name)
    return found


def test_core_imports_only_keras_numpy_scipy():
    forbidden = (
        "tensorflow",
        "models",
        "keras_bninit.models",
        "keras_bninit.harness",
        "torch",
        "jax",
    )
    modules = _core_modules()
    assert len(modules) >= 9
    for path in modules:
        # seeding.py makes the backend's kernels deterministic, importing
        # TensorFlow or PyTorch only when that is the backend.
        allowed = (
            {"tensorflow", "torch"} if path.name == "seeding.py" else set()
        )
        bad = _imports_forbidden(path, forbidden) - allowed
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_models_import_only_the_core():
    for path in sorted((ROOT / "models").glob("*.py")):
        bad = _imports_forbidden(
            path, ("tensorflow", "keras_bninit.harness", "train")
        )
        assert not bad, f"models/{path.name} imports {sorted(bad)}"


def test_import_graph_has_no_circle():
    """The imports run at import time between the project's modules (core,
    harness, models, train.py) form no cycle; the harness reaches `models`
    and the core reaches the harness only lazily (inside functions)."""
    paths = [
        p
        for folder in ("keras_bninit", "models")
        for p in (ROOT / folder).rglob("*.py")
    ] + [ROOT / "train.py"]
    modules = {_module_name(path): path for path in paths}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path, top_level_only=True):
            # The longest project module that `imported` names.
            parts = imported.split(".")
            for i in range(len(parts), 0, -1):
                candidate = ".".join(parts[:i])
                if candidate in modules:
                    if candidate != name:
                        targets.add(candidate)
                    break
        graph[name] = targets
    state, stack = {}, []

    def visit(node):  # depth-first search for a back edge
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    experiment = modules["keras_bninit.harness.experiment"]
    assert "keras_bninit.models" in _imports(experiment)
    assert "keras_bninit.harness" not in graph["keras_bninit"]


_NO_TENSORFLOW = textwrap.dedent(
    """
    import json, sys

    # `import tensorflow` raises ImportError (PyTorch probes for it with
    # importlib.util.find_spec, which then answers "not installed").
    sys.modules["tensorflow"] = None
    import keras, keras_bninit, models
    model = models.build("resnet8", input_shape=(8, 8, 3), input_bn=True)
    opt = keras_bninit.ParamGroupOptimizer(keras.optimizers.SGD(0.1))
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    loss = model.train_on_batch(
        keras.random.uniform((2, 8, 8, 3)), keras.ops.array([0, 1]))
    try:
        keras_bninit.RunConfig
        harness = "loaded"
    except ImportError as error:
        harness = str(error)
    print(json.dumps({
        "backend": keras.backend.backend(),
        "loss": float(loss),
        "tensorflow": sorted(m for m in sys.modules
                             if m.split(".")[0] == "tensorflow"
                             and sys.modules[m] is not None),
        "harness": harness,
    }))
    """
)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_core_and_models_work_without_tensorflow(backend):
    pytest.importorskip(backend)
    out = run_python("-c", _NO_TENSORFLOW, backend=backend)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert np.isfinite(result["loss"])
    assert result["tensorflow"] == []
    # The harness loads too (the in-memory input path needs no tf.data).
    assert result["harness"] == "loaded"


def test_backend_in_use():
    # The suite runs once per backend (.ci/run); this names the one in use.
    assert BACKEND == os.environ.get("KERAS_BACKEND", "tensorflow")
