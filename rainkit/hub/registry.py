"""The architecture registry: one front door (`create_model`) for every network rainkit builds."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

from rainkit.errors import RainkitError


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable[..., Any]
    task: str
    summary: str
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(name: str, *, task: str, summary: str, variants: dict[str, dict[str, Any]] | None = None):
    """Class/function decorator registering a network builder under `name`.

    `variants` names preset keyword sets (e.g. `tiny` for tests). Registering a name twice is
    an error, so two modules cannot silently shadow each other.
    """

    def decorator(builder):
        if name in _ARCHS:
            raise RainkitError(f"architecture '{name}' is already registered")
        _ARCHS[name] = ArchSpec(name, builder, task, summary, dict(variants or {}))
        return builder

    return decorator


def _ensure_builtin_archs() -> None:
    # Importing the models package registers the built-in architectures exactly once.
    import rainkit.models  # noqa: F401


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_arch(name: str) -> ArchSpec:
    _ensure_builtin_archs()
    base = name.split(".", 1)[0]
    if base not in _ARCHS:
        raise RainkitError(f"unknown model '{name}'{suggest(base, _ARCHS)} (known: {', '.join(sorted(_ARCHS))})")
    return _ARCHS[base]


def list_archs() -> list[ArchSpec]:
    _ensure_builtin_archs()
    return [_ARCHS[k] for k in sorted(_ARCHS)]


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
