"""The images of a detection study: entries keyed by name (so labels, clean references and rain seeds can be
found by it), expanded by rainkit's batch layer, and the class filter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rainkit.data.images import IMAGE_SUFFIXES
from rainkit.errors import InputError, ParameterError
from rainkit.io.batch import Found, Job, expand_inputs, is_image_or_video_name, real_path
from rainkit.video.pipeline import VIDEO_SUFFIXES, is_video_name


@dataclass
class Entry(Job):
    """One image to study: a batch job (its `key` is the name without suffix, relative to a given folder)
    with the clean reference of the same name, when there is one. A frame of a video has `frame` set; its
    key is `<video key>/<frame index>`, and its clean or derained reference is the same frame of the video
    of the same name."""

    clean: Path | None = None
    frame: int | None = None
    video_key: str = ""


def collect_entries(specs: Sequence[str], *, recursive: bool = False, vid_stride: int = 1) -> list[Entry]:
    """Expand files, folders and globs into entries keyed by name; two different files with one key fail.
    A video becomes one entry for every `vid_stride`-th frame."""
    if vid_stride < 1:
        raise ParameterError("vid_stride", f"must be at least 1, got {vid_stride}")
    entries: list[Entry] = []
    seen: dict[str, Path] = {}
    for item in expand_inputs(specs, recursive=recursive, media=is_image_or_video_name):
        if not isinstance(item, Found):
            entries.append(Entry(None, None, item.spec, item.problem))
            continue
        key = item.key
        if item.problem is None and key in seen:
            if real_path(seen[key]) != real_path(item.file):
                entries.append(Entry(item.file, None, item.spec, f"{item.file}: another input has the same name "
                                     f"({seen[key]}); names key labels, clean references and rain seeds, so rename one",
                                     key))
            continue
        seen.setdefault(key, item.file)
        if item.problem is None and is_video_name(item.file):
            entries.extend(_video_entries(item, key, vid_stride))
        else:
            entries.append(Entry(item.file, None, item.spec, item.problem, key))
    return entries


def _video_entries(item: Found, key: str, vid_stride: int) -> list[Entry]:
    from rainkit.video.pipeline import probe_video

    try:
        frames = probe_video(item.file).frames
    except InputError as exc:
        return [Entry(item.file, None, item.spec, str(exc), key)]
    width = max(6, len(str(frames)))
    return [Entry(item.file, None, item.spec, None, f"{key}/{index:0{width}d}", frame=index, video_key=key)
            for index in range(0, frames, vid_stride)]


def find_by_key(folder: Path, key: str, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> Path | None:
    """The file in `folder` named `key` (or its last part) with one of `suffixes` (images by default)."""
    for stem in dict.fromkeys((key, Path(key).name)):
        base = folder / stem
        for suffix in tuple(suffixes) + tuple(s.upper() for s in suffixes):
            candidate = base.with_name(base.name + suffix)
            if candidate.is_file():
                return candidate
    return None


def attach_clean(entries: list[Entry], clean_dir: Path) -> None:
    """Give each entry the clean image of the same name in `clean_dir` (an entry without one fails)."""
    if not clean_dir.is_dir():
        raise ParameterError("clean", f"{clean_dir}: no such folder")
    for entry in entries:
        if entry.error or entry.source is None:
            continue
        if entry.frame is not None:
            entry.clean = find_by_key(clean_dir, entry.video_key, VIDEO_SUFFIXES)
            if entry.clean is None:
                entry.error = f"{entry.source}: no clean video named '{Path(entry.video_key).name}' in {clean_dir}"
            continue
        entry.clean = find_by_key(clean_dir, entry.key)
        if entry.clean is None:
            entry.error = f"{entry.source}: no clean image named '{Path(entry.key).name}' in {clean_dir}"


def resolve_classes(classes, names: dict[int, str]) -> tuple[int, ...] | None:
    """Class names or indices (a list, or one comma-separated string) -> sorted detector indices."""
    if classes is None:
        return None
    if isinstance(classes, str):
        classes = classes.split(",")
    by_name = {" ".join(n.lower().split()): i for i, n in names.items()}
    out = []
    for item in classes:
        text = str(item).strip()
        if not text:
            continue
        normalised = " ".join(text.lower().replace("_", " ").split())
        if text.lstrip("-").isdigit():
            index = int(text)
            if index not in names:
                raise ParameterError("classes", f"class index {index} is not one of the detector's 0..{max(names)}")
            out.append(index)
        elif normalised in by_name:
            out.append(by_name[normalised])
        else:
            sample = ", ".join(list(names.values())[:6])
            raise ParameterError("classes", f"'{text}' is not a class of the detector (e.g. {sample}, ...)")
    if not out:
        raise ParameterError("classes", "no class given")
    return tuple(sorted(set(out)))
