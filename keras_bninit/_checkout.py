"""`keras_bninit.models` in a source checkout.

The wheel installs the model zoo as `keras_bninit/models/`; a checkout keeps
it at the repository's top, `models/`. This finder lets
`import keras_bninit.models` find it there too, with or without an editable
install, so the harness and user code use one name everywhere.
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ZOO = os.path.join(_ROOT, "models")


class _CheckoutModels:
    """A meta path finder for `keras_bninit.models` -> `<checkout>/models`."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "keras_bninit.models":
            return None
        return importlib.util.spec_from_file_location(
            fullname,
            os.path.join(_ZOO, "__init__.py"),
            submodule_search_locations=[_ZOO],
        )


def install():
    """Adds the finder when this is a checkout (no keras_bninit/models)."""
    installed = os.path.isdir(os.path.join(_ROOT, "keras_bninit", "models"))
    checkout = os.path.isfile(os.path.join(_ZOO, "_registry.py"))
    if checkout and not installed and _CheckoutModels not in sys.meta_path:
        # First: another checkout's editable install must not lend its zoo
        # to this checkout's core.
        sys.meta_path.insert(0, _CheckoutModels)
