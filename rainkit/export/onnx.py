"""ONNX export of rainkit's networks (SAPNet, PReNet, the TPSeNCE generator), each with a JSON card beside it.

A graph is the whole-image network with dynamic batch, height and width, in fp32 or fp16 (weights and
arithmetic; inputs and outputs stay float32):

* derainers (`sapnet`, `prenet`): input `rainy`, output `derained`, RGB, NCHW, [0, 1]; the output is
  not clamped (rainkit clamps when it writes an image). Any height and width.
* the TPSeNCE generator (`tpsence`): input `clear`, output `rainy`, RGB, NCHW, [-1, 1]. The graph
  pads itself: it reflect-pads the bottom and right to a multiple of 4 (the generator's stride), as
  `rainkit.synth.tpsence.pad_to_multiple` does, and crops the output back, so it takes any height
  and width of at least 5 pixels (as the torch generator: its residual blocks reflect-pad the
  quarter-resolution features, which need 2 pixels a side).

What rainkit's tiler does for big images is not in the graph: rainkit runs such images in tiles
and gives every tile the whole image's statistics (SAPNet's channel-attention means, TPSeNCE's
instance-norm moments), while the graph computes those statistics over the image it is given. Fed
a whole image, the graph is the network; fed tiles, its outputs would differ from the whole-image
ones. The card says so, and rainkit's onnxruntime backend runs whole images.

Every export is checked before anything is written: onnxruntime's CPU provider runs the graph on an
odd-sized image other than the traced one, and the largest absolute difference to rainkit's torch
output (fp32, whole image) must be within `TOLERANCE` (1e-4 for fp32, 5e-3 for fp16). A graph that
does not run or does not hold is never written. The ONNX file and then its card are written
atomically (`rainkit.io.atomic`): a card always describes the file beside it.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rainkit._version import __version__
from rainkit.errors import ParameterError, RainkitError, first_line
from rainkit.io.atomic import atomic_write_bytes, atomic_write_json

OPSET = 17
MIN_OPSET = 13  # opset 13 is where every operator these graphs use has its current form
DTYPES = ("fp32", "fp16")
TOLERANCE = {"fp32": 1e-4, "fp16": 5e-3}
CARD_SUFFIX = ".json"
# bench/onnx_speed.py --fp16 on 2 cores: SAPNet's fp16 graph took 1.7x (idle machine) to 2.4x (busy) the fp32
# graph's time on the CPU provider.
FP16_NOTE = ("weights and arithmetic in fp16, inputs and outputs float32; on onnxruntime's CPU provider this graph "
             "runs slower than the fp32 one: it is meant for providers with fast fp16 kernels")
# The traced input's height and width; the parity check uses a different, odd size so a size baked
# into the graph would show.
EXAMPLE_SIZE = (48, 64)
CHECK_SIZE = (45, 61)
METADATA_KEY = "rainkit.card"  # the card (less the file's own sha256) inside the ONNX file's metadata
EXPORT_EXTRA = "pip install 'rainkit[export]'"


def require_onnx() -> None:
    """Fail with one line naming the extra to install when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise RainkitError(f"ONNX export and the onnxruntime backend need the onnx and onnxruntime packages: "
                           f"{EXPORT_EXTRA}") from None


@dataclass(frozen=True)
class GraphConventions:
    task: str
    input_name: str
    output_name: str
    value_range: tuple[float, float]
    padding: str
    not_in_graph: tuple[str, ...]


_OUTSIDE_ALL = ("reading and writing images, colour conversion to RGB float32, clamping the output and 8-bit "
                "quantisation")
CONVENTIONS = {
    "sapnet": GraphConventions(
        "derain", "rainy", "derained", (0.0, 1.0), "none: any height and width",
        ("tiling: for big images rainkit runs tiles with a halo and gives every tile the whole image's "
         "channel-attention means (recorded over all tiles in a first pass); the graph's channel attention pools "
         "over the image it is given, so it must get the whole image (rainkit's onnxruntime backend does)",
         _OUTSIDE_ALL)),
    "prenet": GraphConventions(
        "derain", "rainy", "derained", (0.0, 1.0), "none: any height and width",
        ("tiling: for big images rainkit runs overlapping tiles (halo and blend), which approximates the "
         "whole-image output; the graph is the whole-image network (rainkit's onnxruntime backend runs whole "
         "images)", _OUTSIDE_ALL)),
    "tpsence": GraphConventions(
        "generate", "clear", "rainy", (-1.0, 1.0),
        "in the graph: it reflect-pads the bottom and right to a multiple of 4 and crops the output back; any "
        "height and width of at least 5 (the residual blocks reflect-pad quarter-resolution features)",
        ("tiling: for big images rainkit runs tiles with the whole image's instance-norm statistics (recorded "
         "over all tiles); the graph normalises with the statistics of the image it is given, so it must get the "
         "whole image", "mapping [0, 1] images to [-1, 1] and back, and rainkit's optional working width",
         _OUTSIDE_ALL)),
}


def _conventions(arch: str) -> GraphConventions:
    if arch not in CONVENTIONS:
        raise ParameterError("arch", f"'{arch}' cannot be exported to ONNX (exportable: {', '.join(CONVENTIONS)})")
    return CONVENTIONS[arch]


def card_path(onnx_path: str | Path) -> Path:
    """The card beside an ONNX file: `<name>.onnx.json`."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + CARD_SUFFIX)


def _graph_module(arch: str, net, dtype: str):
    """The network wrapped as the exported graph: float32 in and out, `dtype` inside."""
    import torch
    import torch.nn.functional as F

    from rainkit.synth.tpsence import ALIGN

    inner = torch.float16 if dtype == "fp16" else torch.float32

    class DerainGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            # Tracing records the path the forward takes: the single-image inference path works in place
            # and folds each image's attention gates into convolution weights behind a batch-size test,
            # so the trace would keep the example's batch size. With grad mode on the network takes its
            # plain path, which computes the same function.
            with torch.enable_grad():
                return self.net(x.to(inner)).float()

    class GeneratorGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            # Traced, these sizes are graph values, so the padding follows each input's size.
            height, width = x.shape[2], x.shape[3]
            pad = (0, (ALIGN - width % ALIGN) % ALIGN, 0, (ALIGN - height % ALIGN) % ALIGN)
            padded = F.pad(x.to(inner), pad, mode="reflect")
            return self.net(padded)[:, :, :height, :width].float()

    return (GeneratorGraph() if arch == "tpsence" else DerainGraph()).eval()


def check_image(height: int, width: int, value_range: tuple[float, float] = (0.0, 1.0)):
    """A deterministic test image (1, 3, H, W) float32: smooth colour gradients, fine texture and bright streaks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([0.5 + 0.3 * np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(3)])
    streaks = (rng.random((height, width)) > 0.97).astype(np.float32) * 0.4
    image = np.clip(base + streaks + 0.03 * rng.standard_normal((3, height, width)), 0.0, 1.0)
    low, high = value_range
    return (low + (high - low) * image).astype(np.float32)[None]


def torch_reference(arch: str, net, x: np.ndarray) -> np.ndarray:
    """rainkit's torch output for a whole image, in the graph's conventions: the derainers' inference path
    (channels-last, inference mode), and the generator on the image padded as `rainkit.synth.tpsence` pads."""
    import torch

    tensor = torch.from_numpy(x)
    with torch.inference_mode():
        if arch == "tpsence":
            from rainkit.synth.tpsence import pad_to_multiple

            height, width = x.shape[2:]
            return net(pad_to_multiple(tensor))[:, :, :height, :width].float().numpy()
        return net(tensor.contiguous(memory_format=torch.channels_last)).float().numpy()


def cpu_session(data: bytes | str | Path, source: str):
    """An onnxruntime session on the CPU provider; a graph it cannot load is a one-line error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(data if isinstance(data, bytes) else str(data), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types do not share a base class with RuntimeError
        raise RainkitError(f"{source}: onnxruntime cannot load the graph ({first_line(exc)})") from None



def _trace(graph, example, conventions: GraphConventions, opset: int) -> bytes:
    import torch

    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        # The TorchScript exporter (the one that needs no onnxscript) warns that it is deprecated and that
        # traced shape arithmetic is recorded as such; the parity check below is what vouches for the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[conventions.input_name], output_names=[conventions.output_name],
                          dynamic_axes={conventions.input_name: axes, conventions.output_name: axes})
    return buffer.getvalue()


def arch_kwargs_of(resolved) -> dict:
    """The architecture settings `rainkit.hub.load_model` built the network with: the registry entry's, then
    those stored in a rainkit checkpoint's metadata."""
    from rainkit.hub.checkpoint import KWARGS_KEY, read_metadata

    kwargs = dict(resolved.entry.arch_kwargs) if resolved.entry is not None else {}
    kwargs.update(json.loads(read_metadata(resolved.path).get(KWARGS_KEY, "{}")))
    return kwargs


@dataclass(frozen=True)
class ExportedGraph:
    """An exported, checked graph in memory: the ONNX bytes and its card."""

    data: bytes
    card: dict

    @property
    def sha256(self) -> str:
        return self.card["onnx_sha256"]


def build_onnx(arch: str, weights: str | None = None, *, dtype: str = "fp32", opset: int = OPSET) -> ExportedGraph:
    """Export `arch` with verified `weights` (a registered name or a file; None: the default) to ONNX in
    memory, check it against rainkit's torch output with onnxruntime on the CPU, and describe it in a card."""
    require_onnx()
    import onnx
    import torch

    from rainkit.hub import get_arch, load_model

    if dtype not in DTYPES:
        raise ParameterError("dtype", f"'{dtype}' is not one of {', '.join(DTYPES)}")
    try:
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as max_opset
    except ImportError:  # older torch: only the default opset is known to work
        max_opset = OPSET
    if not MIN_OPSET <= opset <= max_opset:
        raise ParameterError("opset", f"{opset} is outside the supported {MIN_OPSET}..{max_opset}")
    spec = get_arch(arch)
    conventions = _conventions(spec.name)
    net, resolved = load_model(spec.name, weights)
    net = net.float()
    graph = _graph_module(spec.name, copy.deepcopy(net).half() if dtype == "fp16" else net, dtype)
    example = torch.from_numpy(check_image(*EXAMPLE_SIZE, conventions.value_range))
    traced = _trace(graph, example, conventions, opset)

    check = check_image(*CHECK_SIZE, conventions.value_range)
    session = cpu_session(traced, f"{spec.name} {dtype} graph")
    try:
        produced = session.run(None, {conventions.input_name: check})[0]
    except Exception as exc:  # onnxruntime's own error types
        raise RainkitError(f"{spec.name} {dtype} graph: onnxruntime's CPU provider cannot run it "
                           f"({first_line(exc)}); nothing was written") from None
    difference = float(np.abs(produced - torch_reference(spec.name, net, check)).max())
    tolerance = TOLERANCE[dtype]
    if not difference <= tolerance:
        raise RainkitError(f"{spec.name} {dtype} graph does not hold: its largest difference to rainkit's torch "
                           f"output is {difference:.2e}, above {tolerance:g}; nothing was written")

    card = {
        "arch": spec.name,
        "arch_kwargs": arch_kwargs_of(resolved),
        "task": conventions.task,
        "weights": resolved.entry.name if resolved.entry else str(resolved.path),
        "weights_sha256": resolved.sha256,
        "opset": opset,
        "dtype": dtype,
        "inputs": [_tensor_card(conventions.input_name, conventions)],
        "outputs": [_tensor_card(conventions.output_name, conventions, output=True)],
        "padding": conventions.padding,
        "not_in_graph": list(conventions.not_in_graph),
        "parity": {
            "max_abs_diff": difference,
            "tolerance": tolerance,
            "input_size": list(CHECK_SIZE),
            "against": "rainkit's torch fp32 forward of the whole image, on onnxruntime's CPUExecutionProvider",
        },
        **({"dtype_note": FP16_NOTE} if dtype == "fp16" else {}),
        "exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__.split('+')[0]}",
        "rainkit_version": __version__,
    }
    model = onnx.load_from_string(traced)
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(card, sort_keys=True)})
    model.producer_name, model.producer_version = "rainkit", __version__
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    card["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    return ExportedGraph(data, card)


def _tensor_card(name: str, conventions: GraphConventions, output: bool = False) -> dict:
    low, high = conventions.value_range
    entry = {"name": name, "shape": ["batch", 3, "height", "width"], "layout": "NCHW", "channels": "RGB",
             "dtype": "float32", "range": [low, high]}
    if output and conventions.task == "derain":
        entry["note"] = "not clamped: values can fall slightly outside [0, 1]"
    return entry


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    card_path: Path
    card: dict


def write_export(exported: ExportedGraph, output: str | Path) -> ExportResult:
    """Write the ONNX file and then its card, each atomically."""
    output = Path(output)
    card = {**exported.card, "onnx_file": output.name}
    atomic_write_bytes(output, exported.data)
    return ExportResult(output, atomic_write_json(card_path(output), card), card)


def export_onnx(arch: str, weights: str | None = None, output: str | Path | None = None, *, dtype: str = "fp32",
                opset: int = OPSET) -> ExportResult:
    """`rainkit export` as one call: export, check and write `output` (default `<arch>.onnx`, or
    `<arch>-fp16.onnx`) with its card `<output>.json`."""
    if output is None:
        output = f"{arch}.onnx" if dtype == "fp32" else f"{arch}-{dtype}.onnx"
    output = Path(output)
    if output.is_dir():
        raise ParameterError("output", f"{output} is a folder; give the ONNX file's path")
    if output.suffix != ".onnx":
        raise ParameterError("output", f"{output}: an ONNX file's name ends in .onnx")
    return write_export(build_onnx(arch, weights, dtype=dtype, opset=opset), output)
