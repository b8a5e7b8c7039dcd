"""mme3dr: the reference toolkit for the MME-3DR text-to-3D reasoning benchmark.

The public names below are imported on first use (PEP 562), so ``import mme3dr`` and the ``mme3dr`` command line
start fast and a command that only prints an error never loads trimesh, torch or datasets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS = {
    "CATEGORIES": "mme3dr.categories",
    "GENERATORS": "mme3dr.adapters", "GenerationRequest": "mme3dr.adapters", "GenerationResult": "mme3dr.adapters",
    "Generator": "mme3dr.adapters", "ModelSpec": "mme3dr.adapters", "create_generator": "mme3dr.adapters",
    "Asset": "mme3dr.assets", "AssetError": "mme3dr.assets", "load_asset": "mme3dr.assets",
    "Mme3drError": "mme3dr.errors",
    "Benchmark": "mme3dr.data", "BenchmarkFormatError": "mme3dr.data", "ChecklistItem": "mme3dr.data",
    "PromptRecord": "mme3dr.data", "load_benchmark": "mme3dr.data",
    "generate_run": "mme3dr.generation", "read_generations": "mme3dr.generation",
    "validate_run": "mme3dr.validation",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mme3dr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from mme3dr.adapters import (GENERATORS, GenerationRequest, GenerationResult, Generator, ModelSpec,
                                 create_generator)
    from mme3dr.assets import Asset, AssetError, load_asset
    from mme3dr.categories import CATEGORIES
    from mme3dr.data import Benchmark, BenchmarkFormatError, ChecklistItem, PromptRecord, load_benchmark
    from mme3dr.errors import Mme3drError
    from mme3dr.generation import generate_run, read_generations
    from mme3dr.validation import validate_run
