"""keras_bninit's command line from a source checkout.

    python train.py                  # the offline demo (runs/demo)
    python train.py run --help       # one run; also sweep, report, plot

Installed (`pip install keras_bninit`), the same command is `keras-bninit`.
The code is `keras_bninit/harness/cli.py`; this file loads it without the
package's `__init__`, which imports Keras, so that `--backend` is read (and
`--help` answers) before Keras loads. `import train` gives that module's
names (`train.main`, `train._parser`, ...) as before.
"""

import importlib
import importlib.util
import os
import sys

_CLI = "keras_bninit.harness.cli"


def _cli():
    if _CLI in sys.modules or "keras_bninit" in sys.modules:
        return importlib.import_module(_CLI)
    root = importlib.util.find_spec("keras_bninit").submodule_search_locations
    path = os.path.join(root[0], "harness", "cli.py")
    spec = importlib.util.spec_from_file_location(_CLI, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_CLI] = module
    spec.loader.exec_module(module)
    return module


def __getattr__(name):
    return getattr(_cli(), name)


if __name__ == "__main__":
    sys.exit(_cli().main(prog="train.py", own_process=True))
