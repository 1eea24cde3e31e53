"""Benchmarking deraining models the way the literature does.

    from rainkit.benchmark import run_benchmark
    from rainkit.data.datasets import resolve_dataset

    result = run_benchmark(resolve_dataset("rain100l"), ["none", "prenet=prenet.rain100l"])
    result.means()  # {"none": {"psnr_y": 26.90, ...}, "prenet": {...}}

Importing this package does not import torch; models are loaded when a run needs them.
"""

from rainkit.benchmark.cache import ResumeCache, cache_key, default_cache_path
from rainkit.benchmark.models import ModelSpec, command_line_order, finalize_specs, model_specs, parse_model
from rainkit.benchmark.runner import (
    QUANTIZE_MODES,
    BenchmarkResult,
    ImageEvent,
    ImageScore,
    ModelResult,
    run_benchmark,
    write_grids,
)

__all__ = [
    "QUANTIZE_MODES", "BenchmarkResult", "ImageEvent", "ImageScore", "ModelResult", "ModelSpec", "ResumeCache",
    "cache_key", "command_line_order", "default_cache_path", "finalize_specs", "model_specs", "parse_model",
    "run_benchmark", "write_grids",
]
