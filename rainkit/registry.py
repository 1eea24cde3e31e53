"""The registry of what rainkit builds and loads: architectures and the weights entries that fit them.

Each model file (`rainkit/models/*.py`) declares its architectures and their weights together, as
timm and pyiqa keep them; weights rainkit only borrows (VGG-16, LPIPS, DeepLab, YOLO) are declared in
`rainkit/models/auxiliary.py`. This module imports neither `rainkit.hub` nor `rainkit.models` when
it is imported: the first lookup imports `rainkit.models`, which registers the built-ins once.
Registering a name twice is an error; a name that is not registered suggests close ones.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from rainkit.errors import RainkitError, WeightsError

_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class WeightsEntry:
    name: str  # "arch.tag"
    filename: str  # file name in the cache and in search folders
    sha256: str  # the full digest, lower-case hex
    url: str | None
    license: str
    provenance: str  # where the file and its digest come from
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    # Other relative paths under a search folder where the file may sit (e.g. the layout of a mirror).
    mirror_paths: tuple[str, ...] = ()
    default_for: str | None = None  # architecture this entry is the default of
    # Light-rain weights may name the weights for heavy rain that `rainkit derain --rain auto` switches to when the
    # rain this entry's model removes from an image (`rainkit.derain.engine.Derainer.rain_strength`) exceeds
    # `heavy_threshold`.
    heavy_weights: str | None = None
    heavy_threshold: float = 0.0
    # Generators trained on small photos: the width `rainkit generate` makes their weather at unless told otherwise
    # (`rainkit.synth.tpsence`, working width); 0 runs them on the image as is.
    work_width: int = 0

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def upstream_filename(self) -> str | None:
        """The file's name at its download URL (how a copy fetched by hand is usually named)."""
        if not self.url:
            return None
        return self.url.rsplit("/", 1)[-1] or None


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., Any]
    task: str
    summary: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


_ARCHS: dict[str, ArchSpec] = {}
_WEIGHTS: dict[str, WeightsEntry] = {}


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    """Add a weights entry; a repeated name or file name, or a digest that is not a full sha256, is an error."""
    if "." not in entry.name:
        raise WeightsError(f"weights name '{entry.name}' must be 'arch.tag'")
    if entry.name in _WEIGHTS:
        raise WeightsError(f"weights '{entry.name}' are already registered")
    if not _SHA256.fullmatch(entry.sha256):
        raise WeightsError(f"weights '{entry.name}': sha256 must be the full 64-hex digest in lower case")
    clash = next((e for e in _WEIGHTS.values() if e.filename == entry.filename), None)
    if clash is not None:
        raise WeightsError(f"weights '{entry.name}': file name {entry.filename} is already that of '{clash.name}'")
    _WEIGHTS[entry.name] = entry
    return entry


def register_arch(name: str, *, task: str, summary: str, variants: dict[str, dict[str, Any]] | None = None,
                  weights: Iterable[WeightsEntry] = ()):
    """Class/function decorator registering a network builder under `name`, with its weights entries.

    `variants` names preset keyword sets (e.g. `tiny` for tests); `weights` are the checkpoints
    that fit this architecture (each named `name.tag`).
    """
    entries = tuple(weights)

    def decorator(builder):
        if name in _ARCHS:
            raise RainkitError(f"architecture '{name}' is already registered")
        for entry in entries:
            if entry.arch != name:
                raise WeightsError(f"weights '{entry.name}' are declared with architecture '{name}': name them '{name}.TAG'")
        _ARCHS[name] = ArchSpec(name, builder, task, summary, dict(variants or {}))
        for entry in entries:
            register_weights(entry)
        return builder

    return decorator


def _ensure_builtin() -> None:
    # Importing the models package registers the built-in architectures and weights exactly once.
    import rainkit.models  # noqa: F401


def get_arch(name: str) -> ArchSpec:
    _ensure_builtin()
    if name not in _ARCHS:
        raise RainkitError(f"unknown model '{name}'{suggest(name, _ARCHS)} (known: {', '.join(sorted(_ARCHS))})")
    return _ARCHS[name]


def list_archs() -> list[ArchSpec]:
    _ensure_builtin()
    return [_ARCHS[k] for k in sorted(_ARCHS)]


def get_weights(name: str) -> WeightsEntry:
    _ensure_builtin()
    if name not in _WEIGHTS:
        raise WeightsError(f"unknown weights '{name}'{suggest(name, _WEIGHTS)} (see `rainkit weights list`)")
    return _WEIGHTS[name]


def is_registered_weights(name: str) -> bool:
    _ensure_builtin()
    return name in _WEIGHTS


def list_weights() -> list[WeightsEntry]:
    _ensure_builtin()
    return [_WEIGHTS[k] for k in sorted(_WEIGHTS)]


def default_weights_for(arch: str) -> WeightsEntry | None:
    _ensure_builtin()
    return next((e for e in _WEIGHTS.values() if e.default_for == arch), None)


def create_model(name: str, variant: str | None = None, **kwargs):
    """Build an architecture by name, e.g. `create_model("sapnet")` or `create_model("sapnet", "tiny")`.

    Keyword arguments override the variant's settings. Weights are not loaded here; see
    `rainkit.hub.load_model`.
    """
    spec = get_arch(name)
    settings: dict[str, Any] = {}
    if variant:
        if variant not in spec.variants:
            raise RainkitError(
                f"model '{spec.name}' has no variant '{variant}'{suggest(variant, spec.variants)}"
                f" (variants: {', '.join(sorted(spec.variants)) or 'none'})"
            )
        settings.update(spec.variants[variant])
    settings.update(kwargs)
    return spec.builder(**settings)
