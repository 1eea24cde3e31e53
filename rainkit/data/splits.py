"""Stable, order-free splits of image sets by name hash.

An image's side of a split depends only on its key (a name relative to the set's root, such as
`mwd_rain/rain10.jpg`), so it is the same on every machine, from any working directory, whatever else
the folder holds. Two splits live here: the validation share a trainer keeps back from its own data
(keyed with the run's seed), and the fixed held-out share of the real weather photos that no training
step of rainkit's shipped weights may see: derainer and weather-generator evaluations score on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

HELD_OUT_FRACTION = 0.15


def hash_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key`: the first 8 bytes of its sha256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64


def is_validation(name: str, seed: int, fraction: float) -> bool:
    """Whether a trainer with this seed keeps `name` back for validation."""
    return hash_fraction(f"{seed}:{name}") < fraction


def is_held_out(key: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Whether `key` (a path relative to the photo set's root, with forward slashes) is in the held-out share."""
    return hash_fraction(f"held-out:{key}") < fraction


def held_out_key(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def split_held_out(files: Iterable[Path], root: Path, fraction: float = HELD_OUT_FRACTION) -> tuple[list[Path], list[Path]]:
    """(training, held out) of `files` under `root`."""
    training, held = [], []
    for path in sorted(files):
        (held if is_held_out(held_out_key(path, root), fraction) else training).append(path)
    return training, held
