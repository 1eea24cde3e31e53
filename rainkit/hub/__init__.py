"""The shared model-loading package: devices, precision, architectures, weights, checkpoints."""

from __future__ import annotations

from rainkit.hub.device import Precision, resolve_device, resolve_precision
from rainkit.hub.weights import ResolvedWeights, check_weights, fetch_weights, resolve_weights
from rainkit.registry import (
    WeightsEntry,
    create_model,
    default_weights_for,
    get_arch,
    get_weights,
    list_archs,
    list_weights,
    register_arch,
    register_weights,
)

__all__ = [
    "Precision", "ResolvedWeights", "WeightsEntry", "check_weights", "create_model", "default_weights_for",
    "fetch_weights", "get_arch", "get_weights", "list_archs", "list_weights", "load_model", "register_arch",
    "register_weights", "resolve_device", "resolve_precision", "resolve_weights",
]


def load_model(name: str, weights: str | None = None, device="cpu", strict: bool = True, variant: str | None = None):
    """Build a network, load verified weights into it, and return `(model.eval() on device, ResolvedWeights)`.

    `name` is a registered weights name (`load_model("sapnet.official")`: the architecture comes
    with it) or an architecture (`load_model("sapnet", weights)`), where `weights` is a registered
    `arch.tag` name or a file path; an architecture alone means its default weights, and it is an
    error when there are none (rainkit never runs an untrained network silently).
    """
    import torch

    from rainkit.errors import WeightsError, first_line
    from rainkit.hub.checkpoint import load_state_dict_strict, read_metadata, read_state_dict, weights_arch_kwargs
    from rainkit.registry import is_registered_weights

    arch_name = name
    if "." in name:
        entry = get_weights(name)  # an unknown dotted name gets the close registered names
        if weights is not None and str(weights) != entry.name:
            raise WeightsError(f"'{entry.name}' already names the weights to load; drop weights={weights!r}, or "
                               f"pass the architecture '{entry.arch}' with it")
        arch_name, weights = entry.arch, entry.name
    spec = get_arch(arch_name)
    if weights is None:
        default = default_weights_for(spec.name)
        if default is None:
            raise WeightsError(
                f"no default weights for '{spec.name}' yet: pass `weights` NAME_OR_PATH "
                f"(see `rainkit weights list`; e.g. `rainkit weights fetch sapnet.official`, then that name as `weights`)"
            )
        weights = default.name
    if is_registered_weights(str(weights)) and get_weights(str(weights)).arch != spec.name:
        raise WeightsError(f"weights '{weights}' are for '{get_weights(str(weights)).arch}', not '{spec.name}'")
    resolved = resolve_weights(weights)
    if resolved.entry is not None and resolved.entry.arch != spec.name:
        raise WeightsError(f"{resolved.path}: these are the registered weights '{resolved.entry.name}', "
                           f"for '{resolved.entry.arch}', not '{spec.name}'")
    kwargs = dict(resolved.entry.arch_kwargs) if resolved.entry is not None else {}
    kwargs.update(weights_arch_kwargs(resolved.path, read_metadata(resolved.path), spec))
    try:
        model = create_model(spec.name, variant, **kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{resolved.path}: its architecture settings {kwargs} do not build '{spec.name}' "
                           f"({first_line(exc, None)})") from None
    load_state_dict_strict(model, read_state_dict(resolved.path), source=resolved.path, strict=strict)
    model.eval().requires_grad_(False)
    return model.to(torch.device(device) if isinstance(device, str) else device), resolved
