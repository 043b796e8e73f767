"""JAX's persistent compilation cache for train.py (no backend imported).

On the JAX backend every compiled program (a run's train, evaluation and
prediction steps) is written to JAX's own persistent cache, so a new process
or a Ray worker that compiles the same program reads it from disk instead.
`train.py` turns it on by default, before JAX loads, through JAX's own
environment variables, which Ray tasks are given too:

- `JAX_COMPILATION_CACHE_DIR`: the folder; one the user set wins, else
  `$XDG_CACHE_HOME/keras_bninit/jax` (`~/.cache/keras_bninit/jax`);
- `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`: every program is kept,
  the CPU's short compiles too (JAX's default keeps those over 1 s).

`--no-compile-cache` (or `KERAS_BNINIT_COMPILE_CACHE=off`) turns it off.
Python code calls `enable_compilation_cache()` itself.
"""

import os

SWITCH = "KERAS_BNINIT_COMPILE_CACHE"
DIRECTORY = "JAX_COMPILATION_CACHE_DIR"
MIN_TIME = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
ENV_VARS = (DIRECTORY, MIN_TIME)


def default_directory(environ=None):
    """`$XDG_CACHE_HOME/keras_bninit/jax`, else under `~/.cache`."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "keras_bninit", "jax")


def configure(environ=None, enabled=True):
    """Sets JAX's cache variables in `environ` (before JAX loads).

    Args:
        environ: the environment to change (default `os.environ`).
        enabled: False (`--no-compile-cache`), or `KERAS_BNINIT_COMPILE_CACHE`
            set to "off"/"0", removes them instead.

    Returns:
        The cache folder, or None when off.
    """
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH, "").strip().lower() in ("off", "0", "false", "no"):
        enabled = False
    if not enabled:
        for name in ENV_VARS:
            environ.pop(name, None)
        environ[SWITCH] = "off"  # Ray tasks and child processes too
        return None
    directory = environ.get(DIRECTORY) or default_directory(environ)
    environ[DIRECTORY] = directory
    environ.setdefault(MIN_TIME, "0")
    return directory


def enable_compilation_cache(directory=None, min_compile_time_s=0.0):
    """Turns JAX's persistent compilation cache on in this process.

    For Python code on the JAX backend (train.py does it by itself); JAX
    reads the setting at its next compile. Does nothing on other backends.

    Returns:
        The folder, or None when JAX is not Keras's backend.
    """
    import keras

    if keras.backend.backend() != "jax":
        return None
    import jax

    directory = directory or default_directory()
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s)
    )
    return directory
