"""`rainkit export`: a network and its weights as an ONNX file with a JSON card beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rainkit.cli.app import app, console


@app.command("export")
def export_command(
    model: str = typer.Argument(..., help="Architecture: sapnet, prenet or tpsence (the TPSeNCE generator)."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Registered weights name (see `rainkit weights list`) or a checkpoint path; default: the model's default weights."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="The ONNX file to write (default: <model>.onnx, or <model>-fp16.onnx); its card goes beside it as <file>.json."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, or fp16 (weights and arithmetic in fp16, inputs and outputs float32)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17)."),
) -> None:
    """Export SAPNet, PReNet or the TPSeNCE generator to ONNX (dynamic height and width), checked against
    rainkit's torch output with onnxruntime on the CPU before anything is written."""
    from rich.markup import escape

    from rainkit.export.onnx import OPSET, export_onnx

    result = export_onnx(model, weights, output, dtype=dtype, opset=opset if opset is not None else OPSET)
    card = result.card
    parity = card["parity"]
    console.print(
        f"[green]exported[/green] {card['arch']} ({escape(card['weights'])}, sha256 {card['weights_sha256'][:12]}) "
        f"to {escape(str(result.onnx_path))} — {card['dtype']}, opset {card['opset']}, sha256 "
        f"{card['onnx_sha256'][:12]}; onnxruntime CPU vs torch: max abs difference {parity['max_abs_diff']:.1e} "
        f"(limit {parity['tolerance']:g}); card {escape(str(result.card_path))}", highlight=False, soft_wrap=True)
