"""The shared model-loading package: devices, precision, architectures, weights, checkpoints."""

from __future__ import annotations

from rainkit.hub.device import Precision, resolve_device, resolve_precision
from rainkit.hub.registry import create_model, get_arch, list_archs, register_arch
from rainkit.hub.weights import (
    ResolvedWeights,
    WeightsEntry,
    check_weights,
    default_weights_for,
    fetch_weights,
    get_weights,
    list_weights,
    resolve_weights,
)

__all__ = [
    "Precision", "ResolvedWeights", "WeightsEntry", "check_weights", "create_model", "default_weights_for",
    "fetch_weights", "get_arch", "get_weights", "list_archs", "list_weights", "load_model", "register_arch",
    "resolve_device", "resolve_precision", "resolve_weights",
]


def load_model(arch: str, weights: str | None = None, device="cpu", strict: bool = True, variant: str | None = None):
    """Build `arch`, load verified weights into it, and return `(model.eval() on device, ResolvedWeights)`.

    `weights` is a registered `arch.tag` name or a file path; None means the architecture's
    default weights, and it is an error when there are none (rainkit never runs an untrained
    network silently).
    """
    import torch

    import json

    from rainkit.errors import WeightsError
    from rainkit.hub.checkpoint import ARCH_KEY, KWARGS_KEY, load_state_dict_strict, read_metadata, read_state_dict

    spec = get_arch(arch)
    if weights is None:
        entry = default_weights_for(spec.name)
        if entry is None:
            raise WeightsError(
                f"no default weights for '{spec.name}' yet: pass --weights NAME_OR_PATH "
                f"(see `rainkit weights list`; e.g. `rainkit weights fetch sapnet.official` then --weights sapnet.official)"
            )
        weights = entry.name
    resolved = resolve_weights(weights)
    kwargs = dict(resolved.entry.arch_kwargs) if resolved.entry is not None else {}
    if resolved.entry is not None and resolved.entry.arch != spec.name:
        raise WeightsError(f"weights '{resolved.entry.name}' are for '{resolved.entry.arch}', not '{spec.name}'")
    metadata = read_metadata(resolved.path)
    if ARCH_KEY in metadata:
        if metadata[ARCH_KEY] != spec.name:
            raise WeightsError(f"{resolved.path}: weights are for '{metadata[ARCH_KEY]}', not '{spec.name}'")
        kwargs.update(json.loads(metadata.get(KWARGS_KEY, "{}")))
    model = create_model(spec.name, variant, **kwargs)
    load_state_dict_strict(model, read_state_dict(resolved.path), source=resolved.path, strict=strict)
    model.eval().requires_grad_(False)
    return model.to(torch.device(device) if isinstance(device, str) else device), resolved
