"""Loading a file that is not in a package (``scripts/*.py``, a test's helper script) as a module,
for the tests of what it defines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, *, register: bool = False) -> ModuleType:
    """The module of the file ``path``, named after its stem. ``register``: also put it in
    ``sys.modules`` under that name (dataclasses defined in the file look their module up
    there); the caller removes it when done if it must."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python file that can be loaded")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
