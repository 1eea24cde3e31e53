"""The weights registry: named `arch.tag` checkpoints with full sha256, resolved offline-first.

Resolution order for a registered name: an explicit path given by the caller, then every folder
of `RAINKIT_WEIGHTS_PATH` (os.pathsep-separated), then the folder of weights shipped with
rainkit, then the user cache. Nothing is downloaded unless `fetch_weights` is called.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rainkit.errors import WeightsError
from rainkit.hub.registry import suggest
from rainkit.io.atomic import atomic_write


@dataclass(frozen=True)
class WeightsEntry:
    name: str  # "arch.tag"
    filename: str  # file name in the cache and in search folders
    sha256: str
    url: str | None
    license: str
    provenance: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Other relative paths under a search folder where the file may sit (e.g. the layout of a mirror).
    mirror_paths: tuple[str, ...] = ()
    default_for: str | None = None  # architecture this entry is the default of

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]


_WEIGHTS: dict[str, WeightsEntry] = {}


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    if "." not in entry.name:
        raise WeightsError(f"weights name '{entry.name}' must be 'arch.tag'")
    if entry.name in _WEIGHTS:
        raise WeightsError(f"weights '{entry.name}' are already registered")
    if len(entry.sha256) != 64:
        raise WeightsError(f"weights '{entry.name}': sha256 must be the full 64-hex digest")
    _WEIGHTS[entry.name] = entry
    return entry


def list_weights() -> list[WeightsEntry]:
    _ensure_builtin()
    return [_WEIGHTS[k] for k in sorted(_WEIGHTS)]


def get_weights(name: str) -> WeightsEntry:
    _ensure_builtin()
    if name not in _WEIGHTS:
        raise WeightsError(f"unknown weights '{name}'{suggest(name, _WEIGHTS)} (see `rainkit weights list`)")
    return _WEIGHTS[name]


def default_weights_for(arch: str) -> WeightsEntry | None:
    _ensure_builtin()
    return next((e for e in _WEIGHTS.values() if e.default_for == arch), None)


def _ensure_builtin() -> None:
    import rainkit.hub.catalog  # noqa: F401  (registers the built-in entries)


def cache_dir() -> Path:
    """The user cache for downloaded weights: $RAINKIT_CACHE, else $XDG_CACHE_HOME/rainkit, else ~/.cache/rainkit."""
    root = os.environ.get("RAINKIT_CACHE")
    if root:
        return Path(root).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rainkit" / "weights"


def shipped_dir() -> Path:
    """Weights trained by this project and shipped with the package."""
    return Path(__file__).resolve().parent.parent / "weights"


def search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("RAINKIT_WEIGHTS_PATH", "").split(os.pathsep) if p.strip()]
    return dirs + [shipped_dir(), cache_dir()]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def candidate_paths(entry: WeightsEntry) -> list[Path]:
    paths = []
    for folder in search_dirs():
        paths.append(folder / entry.filename)
        if entry.url:  # the file as downloaded by hand keeps its upstream name
            upstream = entry.url.rsplit("/", 1)[-1]
            if upstream and upstream != entry.filename:
                paths.append(folder / upstream)
        paths.extend(folder / rel for rel in entry.mirror_paths)
    return paths


@dataclass(frozen=True)
class WeightsStatus:
    entry: WeightsEntry
    path: Path | None
    state: str  # "verified", "missing", "bad"
    detail: str = ""


def check_weights(entry: WeightsEntry) -> WeightsStatus:
    """Find an entry's file on the search path and verify its hash (first verified match wins)."""
    bad: list[str] = []
    for path in candidate_paths(entry):
        if path.is_file():
            digest = sha256_file(path)
            if digest == entry.sha256:
                return WeightsStatus(entry, path, "verified")
            bad.append(f"{path} has sha256 {digest[:12]}…, expected {entry.sha256[:12]}…")
    if bad:
        return WeightsStatus(entry, Path(bad[0].split(" has ")[0]), "bad", "; ".join(bad))
    return WeightsStatus(entry, None, "missing", "not found in " + ", ".join(str(d) for d in search_dirs()))


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    entry: WeightsEntry | None  # None for an unregistered file given by path


def resolve_weights(name_or_path: str | Path) -> ResolvedWeights:
    """Resolve a registered name or a file path to a verified file.

    A path to an existing file is used as given; if its hash matches a registered entry, the
    entry is attached (so outputs record the known provenance). A registered name must be found
    on the search path with the right sha256: a mismatch is an error, never a warning.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        digest = sha256_file(path)
        _ensure_builtin()
        entry = next((e for e in _WEIGHTS.values() if e.sha256 == digest), None)
        return ResolvedWeights(path, digest, entry)
    looks_like_path = any(sep in text for sep in ("/", "\\")) or path.suffix in (".pth", ".pt", ".safetensors", ".ckpt")
    if looks_like_path:
        raise WeightsError(f"{text}: no such weights file")
    entry = get_weights(text)
    status = check_weights(entry)
    if status.state == "verified":
        return ResolvedWeights(status.path, entry.sha256, entry)
    if status.state == "bad":
        raise WeightsError(f"weights '{entry.name}': hash mismatch ({status.detail}); delete the file or fetch it again")
    raise WeightsError(missing_weights_message(entry))


def missing_weights_message(entry: WeightsEntry) -> str:
    where = cache_dir() / entry.filename
    how = (f"run `rainkit weights fetch {entry.name}` (downloads {entry.url})" if entry.url
           else "it has no download URL")
    return f"weights '{entry.name}' not found: {how}, or put the file at {where} or in a folder on RAINKIT_WEIGHTS_PATH"


def fetch_weights(name: str, *, force: bool = False, timeout: float = 60.0) -> Path:
    """Download a registered entry into the user cache: temp file, verify sha256, then rename.

    Only ever called on the user's request. Offline, it fails with the URL and where to put the
    file by hand.
    """
    entry = get_weights(name)
    status = check_weights(entry)
    if status.state == "verified" and not force:
        return status.path
    if not entry.url:
        raise WeightsError(f"weights '{entry.name}' have no download URL; {missing_weights_message(entry)}")
    target = cache_dir() / entry.filename
    try:
        with atomic_write(target) as out:
            digest = hashlib.sha256()
            request = urllib.request.Request(entry.url, headers={"User-Agent": "rainkit"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != entry.sha256:
                raise WeightsError(f"downloaded {entry.url} has sha256 {digest.hexdigest()}, expected "
                                   f"{entry.sha256}; nothing was saved")
    except OSError as exc:
        raise WeightsError(
            f"could not download weights '{entry.name}' from {entry.url} ({exc}); "
            f"download it by hand and save it as {target}"
        ) from None
    return target
