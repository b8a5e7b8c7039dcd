"""mme3dr: the reference toolkit for the MME-3DR text-to-3D reasoning benchmark."""

from mme3dr.adapters import GENERATORS, GenerationRequest, GenerationResult, Generator, ModelSpec, create_generator
from mme3dr.assets import Asset, AssetError, load_asset
from mme3dr.categories import CATEGORIES
from mme3dr.data import Benchmark, BenchmarkFormatError, ChecklistItem, PromptRecord, load_benchmark
from mme3dr.generation import generate_run, read_generations
from mme3dr.validation import validate_run

__version__ = "0.1.0"

__all__ = [
    "CATEGORIES", "GENERATORS", "Asset", "AssetError", "Benchmark", "BenchmarkFormatError", "ChecklistItem",
    "GenerationRequest", "GenerationResult", "Generator", "ModelSpec", "PromptRecord", "__version__",
    "create_generator", "generate_run", "load_asset", "load_benchmark", "read_generations", "validate_run",
]
