"""``MODULE:CLASS`` on the command line: an importable module or a path to a .py file."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

__all__ = ["load_object"]


def load_object(spec: str) -> Any:
    """Import ``MODULE:NAME`` (``pkg.mod:Name`` or ``path/to/file.py:Name``) and return the object.

    The current directory is importable, as with ``python -m``.  Errors say
    what was wrong and what was expected.
    """
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise ValueError(f"expected MODULE:CLASS (like myapp.tasks:MyWorker or tasks.py:MyWorker), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    if module_part.endswith(".py") or os.sep in module_part:
        path = os.path.abspath(module_part)
        if not os.path.exists(path):
            raise ValueError(f"no such file: {module_part}")
        module_name = os.path.splitext(os.path.basename(path))[0]
        directory = os.path.dirname(path)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ValueError(f"cannot import {module_part}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_part == exc.name or module_part.startswith(exc.name + ".")):
                raise  # a module that the user's module imports: its traceback says where
            raise ValueError(
                f"no module named {exc.name!r} (give an importable module, from the current directory "
                f"{os.getcwd()}, or a path: {module_part.replace('.', os.sep)}.py:{name})"
            ) from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"module {module_part!r} has no attribute {name!r}") from None
