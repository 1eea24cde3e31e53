"""Weights resolution: registered `arch.tag` checkpoints found offline-first and verified by sha256.

Resolution order for a registered name: an explicit path given by the caller, then every folder
of `RAINKIT_WEIGHTS_PATH` (os.pathsep-separated), then the folder of weights shipped with
rainkit, then the user cache, then torchvision's cache. Nothing is downloaded unless
`fetch_weights` is called. The entries themselves live in `rainkit.registry`.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

from rainkit.errors import RainkitWarning, WeightsError
from rainkit.io.atomic import atomic_write
from rainkit.registry import WeightsEntry, get_weights, list_weights


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


def torch_hub_checkpoints() -> Path:
    """Where torchvision keeps the weights it downloads (`torch.hub.get_dir()/checkpoints`)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs() -> list[Path]:
    dirs = [Path(p).expanduser() for p in os.environ.get("RAINKIT_WEIGHTS_PATH", "").split(os.pathsep) if p.strip()]
    return dirs + [shipped_dir(), cache_dir(), torch_hub_checkpoints()]


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
        upstream = entry.upstream_filename  # the file as downloaded by hand keeps its upstream name
        if upstream and upstream != entry.filename:
            paths.append(folder / upstream)
        paths.extend(folder / rel for rel in entry.mirror_paths)
    return list(dict.fromkeys(paths))


@dataclass(frozen=True)
class WeightsStatus:
    entry: WeightsEntry
    path: Path | None
    state: str  # "verified", "missing", "bad"
    detail: str = ""
    skipped: tuple[str, ...] = ()  # copies passed over because their hash is wrong, one line each


def _mismatch(path: Path, digest: str, entry: WeightsEntry) -> str:
    return f"{path} has sha256 {digest[:12]}…, not the {entry.sha256[:12]}… registered for '{entry.name}'"


def check_weights(entry: WeightsEntry) -> WeightsStatus:
    """Find an entry's file on the search path and verify its hash.

    The first copy that verifies wins; copies before it whose hash is wrong are listed in
    `skipped` (a tampered or truncated file must never be passed over in silence).
    """
    bad: list[str] = []
    first_bad: Path | None = None
    for path in candidate_paths(entry):
        if path.is_file():
            digest = sha256_file(path)
            if digest == entry.sha256:
                return WeightsStatus(entry, path, "verified", skipped=tuple(bad))
            bad.append(_mismatch(path, digest, entry))
            first_bad = first_bad or path
    if bad:
        return WeightsStatus(entry, first_bad, "bad", "; ".join(bad), skipped=tuple(bad))
    return WeightsStatus(entry, None, "missing", "not found in " + ", ".join(str(d) for d in search_dirs()))


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str  # of the file that was loaded, always
    entry: WeightsEntry | None  # None for an unregistered file given by path


def warn_skipped(status: WeightsStatus) -> None:
    for line in status.skipped:
        warnings.warn(f"skipped {line}; using {status.path}", RainkitWarning, stacklevel=3)


def entries_claimed_by(path: Path, claimed_name: str | None = None) -> list[WeightsEntry]:
    """Registered entries a file says it is: by its registered file name, by a mirror layout its path ends
    with, by an upstream name that carries a digest prefix (torchvision's `name-<sha256[:8]>.pth`), or by
    the weights name `claimed_name` written in its own metadata."""
    parts = path.parts
    claimed = []
    for entry in list_weights():
        upstream = entry.upstream_filename
        by_name = path.name == entry.filename
        by_mirror = any(parts[-len(Path(rel).parts):] == Path(rel).parts for rel in entry.mirror_paths)
        by_digest_name = (upstream is not None and path.name == upstream and "-" in path.stem
                          and entry.sha256.startswith(path.stem.rsplit("-", 1)[1].lower()))
        if by_name or by_mirror or by_digest_name or claimed_name == entry.name:
            claimed.append(entry)
    return claimed


def resolve_weights(name_or_path: str | Path) -> ResolvedWeights:
    """Resolve a registered name or a file path to a verified file.

    A path to an existing file is hashed; if the hash matches a registered entry, the entry is
    attached (a sharded set resolves to its index file, given or found in the folder given: the
    index records each shard's sha256, so its own hash stands for the set) (so outputs record the known provenance). A file whose name, path or metadata claims
    a registered entry must have that entry's hash: a mismatch is an error. A registered name must
    be found on the search path with the right sha256; copies with a wrong hash are skipped with a
    warning, and if none verifies that is an error, never a warning.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        from rainkit.hub.checkpoint import INDEX_SUFFIX, find_index

        index = find_index(path)
        if index is None:
            raise WeightsError(f"{text}: a folder, but not a sharded weights set (it holds no single "
                               f"*{INDEX_SUFFIX}); give a weights file")
        path = index
    if path.is_file():
        return _resolve_file(path)
    looks_like_path = any(sep in text for sep in ("/", "\\")) or path.suffix in (".pth", ".pt", ".safetensors", ".ckpt")
    if looks_like_path:
        raise WeightsError(f"{text}: no such weights file")
    entry = get_weights(text)
    status = check_weights(entry)
    if status.state == "verified":
        warn_skipped(status)
        return ResolvedWeights(status.path, entry.sha256, entry)
    if status.state == "bad":
        raise WeightsError(f"weights '{entry.name}': hash mismatch ({status.detail}); delete the file or fetch it again")
    raise WeightsError(missing_weights_message(entry))


def resolve_auxiliary(path: str | Path | None, default: str, option: str, switch_off: str) -> ResolvedWeights:
    """Weights a feature borrows (a loss backbone, say): the file or name given, else the registered
    `default`; when the default is not on this machine, say how to get it, pass it, or do without."""
    if path:
        return resolve_weights(path)
    entry = get_weights(default)
    status = check_weights(entry)
    if status.state == "missing":
        raise WeightsError(
            f"{entry.filename} ({entry.name}) not found: `rainkit weights fetch {entry.name}` downloads it, or pass "
            f"its path with {option}, or switch off what needs it with {switch_off}"
        )
    return resolve_weights(default)


NAME_KEY = "rainkit.weights"  # safetensors metadata: the registered name a file says it is


def _resolve_file(path: Path) -> ResolvedWeights:
    from rainkit.hub.checkpoint import read_metadata

    digest = sha256_file(path)
    entry = next((e for e in list_weights() if e.sha256 == digest), None)
    if entry is not None:
        return ResolvedWeights(path, digest, entry)
    claimed = entries_claimed_by(path, read_metadata(path).get(NAME_KEY))
    if claimed:
        names = " or ".join(f"'{e.name}' ({e.sha256[:12]}…)" for e in claimed)
        real = (f"fetch the real one with `rainkit weights fetch {claimed[0].name}`" if claimed[0].url
                else f"use the registered name {claimed[0].name}")
        raise WeightsError(
            f"{path}: claims to be registered weights {names} by its name or metadata, but its sha256 is "
            f"{digest[:12]}…; it is a modified or different file: {real}, or rename your own file (and drop "
            f"'{NAME_KEY}' from its metadata) to load it as such"
        )
    return ResolvedWeights(path, digest, None)


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
        warn_skipped(status)
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
