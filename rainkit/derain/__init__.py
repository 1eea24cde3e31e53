"""Deraining: the loaded-model engine and batch processing of files (the tiler is `rainkit.tiling`)."""

from rainkit.derain.engine import Derainer, load_derainer

__all__ = ["Derainer", "load_derainer"]

from rainkit.derain.batch import derain_files, derain_paths  # noqa: E402
from rainkit.io.batch import BatchResult, ItemResult, plan_jobs  # noqa: E402

__all__ += ["BatchResult", "ItemResult", "derain_files", "derain_paths", "plan_jobs"]
