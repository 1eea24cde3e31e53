"""The one batch layer of the file commands (`derain`, `generate`, `segment`, `detect`).

* `expand_inputs` turns files, folders and globs into the image files they name, and turns what cannot be
  used (a missing path, an empty folder, a broken link or a link loop) into a failed item instead of
  dropping it, so every input the user named is accounted for.
* `plan_jobs` gives each input its output path and refuses outputs that would overwrite an input or
  collide with another input's output.
* `Shard` takes every Nth input (`--shard K/N`, or torchrun's `RANK`/`WORLD_SIZE`), so one folder job can
  spread over processes or machines under any launcher; N shards together write exactly the files one
  run writes.
* `run_batch` runs a function over the jobs: it skips jobs whose outputs are complete (resuming a killed
  run), redoes those whose outputs are not (and says so), turns every error into a one-line failure,
  and never stops at a bad item. The caller decides the exit code from `BatchResult.ok`.

Library messages name what they are about (files, parameters), never a command-line flag.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from rainkit._version import __version__
from rainkit.data.images import IMAGE_SUFFIXES, OUTPUT_FORMATS, read_image
from rainkit.errors import InputError, RainkitError

SIDECAR_SUFFIX = ".json"


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def is_image_or_video_name(path: Path) -> bool:
    from rainkit.video.pipeline import is_video_name

    return is_image_name(path) or is_video_name(path)


def normalise_format(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    fmt = {"jpeg": "jpg", "tiff": "tif"}.get(fmt, fmt)
    if fmt not in OUTPUT_FORMATS:
        raise RainkitError(f"unknown output format '{fmt}' (use {', '.join(OUTPUT_FORMATS)})")
    return fmt


# --- inputs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Found:
    """One input file: where it is, the folder it was found in (None for a file named directly), the
    spec that named it, and why it cannot be used (None when it can)."""

    file: Path
    folder: Path | None
    spec: str
    problem: str | None = None

    @property
    def key(self) -> str:
        """Its name without suffix, relative to the folder it was found in: what outputs, labels, clean
        references and rain seeds are keyed by."""
        if self.folder is None:
            return self.file.stem
        return self.file.relative_to(self.folder).with_suffix("").as_posix()


@dataclass(frozen=True)
class Unmatched:
    """A spec that named no usable file (no such path, an empty folder, a glob with no match)."""

    spec: str
    problem: str


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (a loop, or a target that is missing), or None."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    return None


def real_path(path: Path) -> Path:
    """The resolved path, without failing on a link loop (which then stays as it is)."""
    return Path(os.path.realpath(path))


def _folder_files(folder: Path, recursive: bool, media: Callable[[Path], bool]) -> list[Path]:
    """Media entries of a folder: regular files, and links that cannot be followed (so they are reported,
    not silently dropped)."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if media(p) and (p.is_file() or link_problem(p)))


def _found(files: list[Path], folder: Path | None, spec: str) -> list[Found]:
    """Files of a folder or a glob, each with the link problem that stops it being read, if any."""
    found = []
    for file in files:
        problem = link_problem(file)
        found.append(Found(file, folder, spec, f"{file}: {problem}" if problem else None))
    return found


def expand_inputs(specs: Sequence[str], *, recursive: bool = False,
                  media: Callable[[Path], bool] = is_image_name) -> list[Found | Unmatched]:
    """Files, folders and glob patterns -> the files they name, in order, each with the problem that stops
    it being read where one is known before reading (link loops, broken links). In folders, the files
    `media` accepts (by name) are taken: images by default."""
    out: list[Found | Unmatched] = []
    for spec in specs:
        path = Path(spec).expanduser()
        problem = link_problem(path)
        if problem is not None:
            out.append(Found(path, None, spec, f"{path}: {problem}"))
        elif path.is_dir():
            files = _folder_files(path, recursive, media)
            if not files:
                out.append(Unmatched(spec, f"{spec}: no images in folder"
                                     + ("" if recursive else " (use `recursive` for sub-folders)")))
            out.extend(_found(files, path, spec))
        elif path.exists():
            out.append(Found(path, None, spec))
        elif any(ch in spec for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=recursive)
                             if Path(m).is_file() or link_problem(Path(m)))
            if not matches:
                out.append(Unmatched(spec, f"{spec}: no files match"))
            out.extend(_found(matches, None, spec))
        else:
            out.append(Unmatched(spec, f"{spec}: no such file or folder"))
    return out


# --- jobs ----------------------------------------------------------------------------------------

@dataclass
class Job:
    source: Path | None  # None when the input spec itself could not be resolved
    output: Path | None
    spec: str
    error: str | None = None
    key: str = ""

    @property
    def label(self) -> str:
        return str(self.source) if self.source is not None else self.spec


def plan_jobs(specs: Sequence[str], output_dir: str | Path | None = None, *, recursive: bool = False,
              fmt: str = "png", beside_suffix: str | None = None, videos: bool = False) -> list[Job]:
    """Expand inputs into (input, output) jobs.

    With an output folder, `a/b.jpg` becomes `OUT/b.<fmt>` (files found inside a given folder keep their
    sub-folders). Without one, each output goes beside its input as `<stem><beside_suffix>.<fmt>`. With
    `videos`, folders yield videos too, and a video's output keeps a video container
    (`rainkit.video.video_output_suffix`) instead of `fmt`.
    """
    fmt = normalise_format(fmt)
    if output_dir is None and not beside_suffix:
        raise RainkitError("an output folder is needed (output_dir)")
    out_root = Path(output_dir) if output_dir is not None else None
    expanded = expand_inputs(specs, recursive=recursive, media=is_image_or_video_name if videos else is_image_name)
    inputs = {real_path(f.file) for f in expanded if isinstance(f, Found)}
    claimed: dict[Path, Path] = {}
    jobs: list[Job] = []
    for item in expanded:
        if isinstance(item, Unmatched):
            jobs.append(Job(None, None, item.spec, item.problem))
            continue
        file = item.file
        suffix = f".{fmt}"
        if videos:
            from rainkit.video.pipeline import is_video_name, video_output_suffix

            suffix = video_output_suffix(file) if is_video_name(file) else suffix
        if out_root is None:
            output = file.with_name(f"{file.stem}{beside_suffix}{suffix}")
        elif item.folder is not None:
            output = out_root / file.relative_to(item.folder).with_suffix(suffix)
        else:
            output = out_root / f"{file.stem}{suffix}"
        error = item.problem
        target = real_path(output)
        if error is None:
            if target in inputs:
                error = (f"{file}: its output {output} would overwrite an input; write to another output folder "
                         f"or format")
            elif target in claimed and claimed[target] != real_path(file):
                error = f"{file}: its output {output} is also the output of {claimed[target]}; rename one input"
            else:
                claimed[target] = real_path(file)
        jobs.append(Job(file, output, item.spec, error, item.key))
    return jobs


# --- shards --------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`: every `count`-th input starting at the `index`-th."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise RainkitError(f"shard {self.index}/{self.count}: want K/N with 1 <= K <= N")

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        """`K/N` -> Shard(K, N); None or empty -> torchrun's RANK/WORLD_SIZE when set, else the whole set."""
        if text is None or not str(text).strip():
            return cls.from_environment()
        parts = str(text).strip().split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            raise RainkitError(f"shard '{text}': want K/N, e.g. 1/4 for the first of four shards") from None
        return cls(index, count)

    @classmethod
    def from_environment(cls) -> "Shard":
        world = os.environ.get("WORLD_SIZE")
        rank = os.environ.get("RANK")
        if world and rank and world.isdigit() and rank.isdigit() and int(world) > 1:
            return cls(int(rank) + 1, int(world))
        return cls()

    @property
    def whole(self) -> bool:
        return self.count == 1

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index - 1::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# --- results -------------------------------------------------------------------------------------

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
    frames: int | None = None  # videos
    note: str | None = None  # e.g. why an existing output was redone


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
    def redone(self) -> list[ItemResult]:
        return [item for item in self.items if item.note]

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


def one_line(exc: BaseException, source: object | None = None) -> str:
    """An exception as one line: InputErrors already name their file; others get `source` in front."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    if isinstance(exc, InputError):
        return first
    if isinstance(exc, RainkitError):
        return f"{source}: {first}" if source is not None else first
    kind = type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return f"{source}: {exc.strerror}" if source is not None else exc.strerror
    return f"{source}: {kind}: {first}" if source is not None else f"{kind}: {first}"


# --- completeness of existing outputs --------------------------------------------------------------

def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + SIDECAR_SUFFIX)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_problem(path: Path, *, decode: Callable[[Path], object] | None = None) -> str | None:
    """Why an existing output cannot be trusted on resume, or None when it is complete.

    Complete means: rainkit's sidecar beside it records the output's sha256 and the file has it; or else
    the file decodes (`decode` raises on a bad file; default: as an image), so a complete file someone
    else put there is never destroyed.
    """
    if not path.exists():
        return "missing"
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "empty (0 bytes)"
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            expected = json.loads(sidecar.read_text()).get("output_sha256")
        except (OSError, ValueError, AttributeError):
            expected = None
        if expected:
            from rainkit.hub.weights import sha256_file

            if sha256_file(path) == expected:
                return None
    try:
        (decode or read_image)(path)
    except (InputError, OSError, ValueError) as exc:
        return f"not a complete file ({str(exc).split(': ', 1)[-1]})"
    return None


# --- the runner ----------------------------------------------------------------------------------

def main_output(job: Job) -> list[Path]:
    return [job.output]


def failed_item(job: Job, error: str, seconds: float) -> ItemResult:
    return ItemResult(job.label, str(job.output) if job.output is not None else None, "failed", error, seconds)


def run_batch(
    jobs: Iterable[Job],
    process: Callable[[Job], ItemResult],
    *,
    outputs_of: Callable[[Job], Sequence[Path]] | None = main_output,
    overwrite: bool = False,
    decode: Callable[[Path], object] | None = None,
    settings: dict | None = None,
    failure: Callable[[Job, str, float], ItemResult] = failed_item,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[ItemResult, int, int], None] | None = None,
) -> BatchResult:
    """Run `process` over `jobs` and collect one item per job.

    A job planned with an error fails with it. Unless `overwrite`, a job whose outputs (`outputs_of(job)`,
    default `[job.output]`; None for jobs that write nothing to resume from) all exist and are complete is
    skipped; one whose outputs exist but are not is redone, with a note saying why. `process` returns the
    item of a finished job; anything it raises ends that job as failed with a one-line reason (`failure`
    builds that item: by default an ItemResult), and the batch goes on.
    """
    jobs = list(jobs)
    result = BatchResult(settings=dict(settings or {}))
    started = time.perf_counter()
    if on_start:
        on_start(len(jobs))
    for index, job in enumerate(jobs, start=1):
        item = _run_job(job, process, outputs_of, overwrite, decode, failure)
        result.items.append(item)
        if on_progress:
            on_progress(item, index, len(jobs))
    result.seconds = time.perf_counter() - started
    return result


def _run_job(job: Job, process, outputs_of, overwrite: bool, decode, failure) -> ItemResult:
    if job.error:
        return failure(job, job.error, 0.0)
    note = None
    if outputs_of is not None and not overwrite:
        outputs = list(outputs_of(job))
        present = [p for p in outputs if p.exists() or p.is_symlink()]
        if present:
            problems = [(p, output_problem(p, decode=decode)) for p in outputs]
            bad = [(p, why) for p, why in problems if why is not None and why != "missing"]
            if not bad and len(present) == len(outputs):
                return ItemResult(job.label, str(job.output), "skipped")
            if bad:
                note = "; ".join(f"existing output {p} was {why}" for p, why in bad) + ": redone"
    started = time.perf_counter()
    try:
        item = process(job)
    except (InputError, RainkitError, OSError, RuntimeError, MemoryError, ValueError) as exc:
        item = failure(job, one_line(exc, job.source), time.perf_counter() - started)
    if not item.seconds:
        item.seconds = time.perf_counter() - started
    if note:
        item.note = note
    return item
