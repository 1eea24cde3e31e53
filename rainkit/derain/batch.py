"""Deraining files: input collection, output naming, resumable batches, sidecars.

A batch never stops at a bad file: every input ends as done, skipped (its output exists) or
failed (with a one-line reason), and the caller decides the exit code from the result.
"""

from __future__ import annotations

import glob
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from rainkit._version import __version__
from rainkit.data.images import IMAGE_SUFFIXES, OUTPUT_FORMATS, encode_image, read_image
from rainkit.io.atomic import atomic_write_bytes, atomic_write_json
from rainkit.derain.engine import Derainer
from rainkit.errors import InputError, RainkitError

SUFFIX_SINGLE = "_derained"


@dataclass
class Job:
    source: Path | None  # None when the input spec itself could not be resolved
    output: Path | None
    spec: str
    error: str | None = None


@dataclass
class ItemResult:
    input: str
    output: str | None
    status: str  # "done", "skipped", "failed"
    error: str | None = None
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None
    tile: int | None = None


@dataclass
class BatchResult:
    items: list[ItemResult] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def failed(self) -> list[ItemResult]:
        return [item for item in self.items if item.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return {
            "rainkit_version": __version__,
            "settings": self.settings,
            "seconds": round(self.seconds, 3),
            "counts": {s: self.count(s) for s in ("done", "skipped", "failed")},
            "items": [asdict(item) for item in self.items],
        }


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def plan_jobs(specs: list[str], output_dir: str | Path | None = None, *, recursive: bool = False,
              fmt: str = "png") -> list[Job]:
    """Expand files, folders and globs into (input, output) jobs.

    With an output folder, `a/b.jpg` becomes `OUT/b.<fmt>` (files found inside a given folder keep
    their sub-folders). Without one, each output goes beside its input as `<stem>_derained.<fmt>`.
    """
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        raise RainkitError(f"unknown output format '{fmt}' (use {', '.join(OUTPUT_FORMATS)})")
    out_root = Path(output_dir) if output_dir is not None else None
    found: list[tuple[Path, Path | None, str]] = []  # (file, folder it came from, spec)
    jobs: list[Job] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and _is_image(p))
            if not files:
                jobs.append(Job(None, None, spec, f"{spec}: no images in folder" + ("" if recursive else " (use --recursive for sub-folders)")))
            found.extend((f, path, spec) for f in files)
        elif path.exists() or path.is_symlink():
            found.append((path, None, spec))
        elif any(ch in spec for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive) if Path(m).is_file())
            if not matches:
                jobs.append(Job(None, None, spec, f"{spec}: no files match"))
            found.extend((m, None, spec) for m in matches)
        else:
            jobs.append(Job(None, None, spec, f"{spec}: no such file or folder"))
    inputs = {f.resolve() for f, _, _ in found}
    claimed: dict[Path, Path] = {}
    for file, folder, spec in found:
        if out_root is None:
            output = file.with_name(f"{file.stem}{SUFFIX_SINGLE}.{fmt}")
        elif folder is not None:
            output = out_root / file.relative_to(folder).with_suffix(f".{fmt}")
        else:
            output = out_root / f"{file.stem}.{fmt}"
        error = None
        resolved = output.resolve()
        if resolved in inputs:
            error = f"{file}: output {output} would overwrite an input; choose another --output or --format"
        elif resolved in claimed and claimed[resolved] != file.resolve():
            error = f"{file}: output {output} is also the output of {claimed[resolved]}; rename one input"
        else:
            claimed[resolved] = file.resolve()
        jobs.append(Job(file, output, spec, error))
    return jobs


def derain_files(
    derainer: Derainer,
    jobs: list[Job],
    *,
    overwrite: bool = False,
    quality: int | None = None,
    sidecar: bool = True,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Derain every job; existing outputs are skipped unless `overwrite` (so a killed batch resumes)."""
    result = BatchResult(settings={**derainer.describe(), "tile": derainer.tile if derainer.tile is not None else "auto"})
    start = time.perf_counter()
    total = len(jobs)
    for index, job in enumerate(jobs, start=1):
        item = _run_job(derainer, job, overwrite=overwrite, quality=quality, sidecar=sidecar, on_tile=on_tile)
        result.items.append(item)
        if on_progress:
            on_progress(item, index, total)
    result.seconds = time.perf_counter() - start
    return result


def _run_job(derainer: Derainer, job: Job, *, overwrite: bool, quality: int | None, sidecar: bool,
             on_tile: Callable[[int, int], None] | None) -> ItemResult:
    label = str(job.source) if job.source is not None else job.spec
    if job.error:
        return ItemResult(label, str(job.output) if job.output else None, "failed", job.error)
    assert job.source is not None and job.output is not None
    if job.output.exists() and not overwrite:
        return ItemResult(label, str(job.output), "skipped")
    started = time.perf_counter()
    try:
        image = read_image(job.source)
        height, width = image.rgb.shape[:2]
        image.rgb = derainer.derain(image.rgb, on_tile=on_tile)
        data = encode_image(image, job.output.suffix, quality)
        seconds = time.perf_counter() - started
        if sidecar:
            record = {
                "input": str(job.source),
                "output": str(job.output),
                **derainer.describe(),
                "tile": derainer.last_tile,
                "halo": derainer.halo if derainer.last_tile else 0,
                "size": [width, height],
                "seconds": round(seconds, 3),
                "rainkit_version": __version__,
            }
            # The sidecar goes first: an image without its record is redone on resume, never the reverse.
            atomic_write_json(_sidecar_path(job.output), record)
        atomic_write_bytes(job.output, data)
        return ItemResult(label, str(job.output), "done", seconds=seconds, width=width, height=height,
                          tile=derainer.last_tile)
    except InputError as exc:
        return ItemResult(label, str(job.output), "failed", str(exc), time.perf_counter() - started)
    except RainkitError as exc:
        return ItemResult(label, str(job.output), "failed", f"{job.source}: {exc}", time.perf_counter() - started)
    except (OSError, RuntimeError, MemoryError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ItemResult(label, str(job.output), "failed", f"{job.source}: {type(exc).__name__}: {message[:200]}",
                          time.perf_counter() - started)


def _sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def derain_paths(
    inputs: list[str],
    output: str | Path | None = None,
    *,
    model: str = "sapnet",
    weights: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    tile: int | None = None,
    recursive: bool = False,
    fmt: str = "png",
    quality: int | None = None,
    overwrite: bool = False,
    sidecar: bool = True,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Everything `rainkit derain` does, as one call: plan outputs, load the model, run the batch."""
    from rainkit.derain.engine import load_derainer

    jobs = plan_jobs(inputs, output, recursive=recursive, fmt=fmt)
    derainer = load_derainer(model, weights, device=device, precision=precision, tile=tile)
    if on_start:
        on_start(len(jobs))
    return derain_files(derainer, jobs, overwrite=overwrite, quality=quality, sidecar=sidecar,
                        on_progress=on_progress, on_tile=on_tile)
