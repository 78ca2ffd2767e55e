"""Importing a script that lives outside any package: the playground's generators and scorers, which the
lmms-eval task utils and other generators reuse instead of copying."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_script(path: str | Path, name: str) -> ModuleType:
    """The module in ``path``, imported once under ``name`` and registered in ``sys.modules`` (dataclasses
    need their module there); a failed import leaves nothing registered."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(path))
        if spec is None or spec.loader is None:
            raise ImportError(f"{path}: not an importable Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


__all__ = ["import_script"]
