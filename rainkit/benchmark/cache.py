"""A per-image JSONL cache so that a killed benchmark resumes without recomputing finished images.

Each line is one scored image: `{"key": ..., "model": ..., "id": ..., "scores": {...}, "seconds": ...,
"not_scored": {metric: reason}}`; an image that failed is not written, so a resumed run tries it again.
The key is a sha256 over everything that decides the scores: the model, the sha256 of its
weights, the quantisation, the crop border, device type, precision and tiling, and the digest
of the pair's files. A line is written (and flushed) as soon as an image is scored, so a run
killed at any point loses at most the image in flight; a torn last line is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from pathlib import Path

from rainkit.errors import RainkitError


def cache_key(settings: dict, pair_digest: str) -> str:
    text = json.dumps({**settings, "pair": pair_digest}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_path(output: str | os.PathLike) -> Path:
    """The cache beside a JSON/CSV output: `r.json` -> `r.json.cache.jsonl`."""
    output = Path(output)
    return output.with_name(output.name + ".cache.jsonl")


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # "inf", "nan": JSON has no such numbers
    return value


def _decode(value):
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


class ResumeCache:
    """Read existing entries (when resuming) and append new ones, one line per image."""

    def __init__(self, path: str | os.PathLike, resume: bool = True):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if resume and self.path.is_file():
            self._read()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a" if resume else "w", encoding="utf-8")
        except OSError as exc:
            raise RainkitError(f"{self.path}: cannot write the resume cache ({exc.strerror or exc})") from None
        if resume and self.path.stat().st_size and not self._ends_with_newline():
            self._handle.write("\n")  # after a torn line, start clean

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def _read(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                    key = entry["key"]
                    entry["scores"] = {k: _decode(v) for k, v in entry["scores"].items()}
                    entry["not_scored"] = {str(k): str(v) for k, v in entry.get("not_scored", {}).items()}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # a line torn by a kill, or not ours
                self.entries[key] = entry

    def get(self, key: str, metrics) -> dict | None:
        """The entry for `key` if it holds every metric asked for (a value, or why there is none)."""
        entry = self.entries.get(key)
        if entry is None or any(m not in entry["scores"] and m not in entry["not_scored"] for m in metrics):
            return None
        return entry

    def put(self, key: str, model: str, image_id: str, scores: dict, seconds: float,
            not_scored: dict | None = None) -> None:
        entry = {"key": key, "model": model, "id": image_id, "scores": scores, "seconds": seconds,
                 "not_scored": dict(not_scored or {})}
        line = json.dumps({**entry, "scores": {k: _encode(v) for k, v in scores.items()}}) + "\n"
        with self._lock:
            self.entries[key] = entry
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if not self._handle.closed:
                self._handle.close()

    def __len__(self) -> int:
        return len(self.entries)
