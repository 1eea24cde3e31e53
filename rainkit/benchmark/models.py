"""What to benchmark: `none` (the rainy input itself) or a registered model with its weights.

The command line says it as `--model none --model prenet=PATH --model sapnet --weights NAME`:
`model=weights` inside one value, or a `--weights` that applies to the model named just before
it (or to the only model). A model without weights gets its architecture's default weights,
and `load_derainer` refuses clearly when there are none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from rainkit.errors import ParameterError

NONE = "none"


@dataclass(frozen=True)
class ModelSpec:
    model: str  # "none" or an architecture name (sapnet, prenet, ...)
    weights: str | None = None  # registered name or checkpoint path; None: the architecture's default
    label: str = ""  # unique name of this entry in tables and JSON; filled by `finalize_specs`

    @property
    def is_input(self) -> bool:
        return self.model == NONE

    def __str__(self) -> str:
        return self.model if self.weights is None else f"{self.model}={self.weights}"


def parse_model(text: str) -> ModelSpec:
    """`none`, `prenet`, or `prenet=WEIGHTS`."""
    text = text.strip()
    name, sep, weights = text.partition("=")
    name = name.strip().lower()
    if not name:
        raise ParameterError("models", f"'{text}': no model name (use none, sapnet, prenet, or MODEL=WEIGHTS)")
    if sep and not weights.strip():
        raise ParameterError("models", f"'{text}': empty weights after '='")
    if name == NONE:
        if sep:
            raise ParameterError("models", f"'{text}': 'none' scores the rainy input and takes no weights")
        return ModelSpec(NONE)
    return ModelSpec(name, weights.strip() or None)


def _attach(spec: ModelSpec, weights: str) -> ModelSpec:
    if spec.is_input:
        raise ParameterError("weights", f"{weights}: follows model 'none', which takes no weights")
    if spec.weights is not None:
        raise ParameterError("weights", f"{weights}: model '{spec}' already names its weights")
    return replace(spec, weights=weights)


def model_specs(models: Sequence[str], weights: Sequence[str] = (),
                order: Sequence[tuple[str, str]] | None = None) -> list[ModelSpec]:
    """Combine `--model` and `--weights` values into specs.

    `order` is the command line's sequence of ("model" | "weights", value): each `--weights`
    belongs to the `--model` before it. Without it (library use), a single `--weights` goes with
    the only model, and anything else is ambiguous.
    """
    specs = [parse_model(m) for m in models] or [ModelSpec(NONE)]
    weights = list(weights)
    if not weights:
        return finalize_specs(specs)
    if order is not None and [v for k, v in order if k == "model"] == list(models) \
            and [v for k, v in order if k == "weights"] == weights:
        result: list[ModelSpec] = []
        pending: list[str] = []  # --weights given before any --model
        for kind, value in order:
            if kind == "model":
                result.append(parse_model(value))
            elif result:
                result[-1] = _attach(result[-1], value)
            else:
                pending.append(value)
        if pending:
            if len(result) != 1 or len(pending) != 1:
                raise ParameterError("weights", "weights before the first model are ambiguous with several "
                                                "models: put each weights after its model, or write MODEL=WEIGHTS")
            result[0] = _attach(result[0], pending[0])
        return finalize_specs(result)
    candidates = [i for i, s in enumerate(specs) if not s.is_input and s.weights is None]
    if len(weights) == 1 and len(candidates) == 1:
        specs[candidates[0]] = _attach(specs[candidates[0]], weights[0])
        return finalize_specs(specs)
    raise ParameterError("weights", "several models and weights: write MODEL=WEIGHTS (e.g. prenet=prenet.rain100l) "
                                    "or put each weights right after its model")


def _weights_tag(weights: str | None) -> str:
    if weights is None:
        return "default"
    path = Path(weights)
    if len(path.parts) > 1 or path.suffix in (".pth", ".pt", ".safetensors", ".ckpt"):
        parts = path.with_suffix("").parts
        return "/".join(parts[-2:])
    return weights


def finalize_specs(specs: Iterable[ModelSpec]) -> list[ModelSpec]:
    """Give every spec a unique label (the model name, plus its weights where a model repeats);
    the same model with the same weights twice is refused."""
    specs = list(specs)
    seen: set[tuple[str, str | None]] = set()
    for spec in specs:
        key = (spec.model, spec.weights)
        if key in seen:
            raise ParameterError("models", f"{spec} is listed twice")
        seen.add(key)
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec.model] = counts.get(spec.model, 0) + 1
    labelled = []
    for spec in specs:
        label = spec.label or (spec.model if counts[spec.model] == 1 else f"{spec.model}:{_weights_tag(spec.weights)}")
        labelled.append(replace(spec, label=label))
    labels = [s.label for s in labelled]
    if len(set(labels)) != len(labels):
        labelled = [replace(s, label=f"{s.label}#{i + 1}") for i, s in enumerate(labelled)]
    return labelled


def command_line_order(args: Sequence[str]) -> list[tuple[str, str]]:
    """The `--model`/`--weights` values of a raw argument list, in the order given."""
    flags = {"--model": "model", "-m": "model", "--weights": "weights", "-w": "weights"}
    order: list[tuple[str, str]] = []
    i = 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if eq and name in ("--model", "--weights"):
            order.append((flags[name], value))
        elif arg in flags and i + 1 < len(args):
            order.append((flags[arg], args[i + 1]))
            i += 1
        elif len(arg) > 2 and arg[:2] in ("-m", "-w") and not arg.startswith("--"):
            order.append((flags[arg[:2]], arg[2:]))
        i += 1
    return order
