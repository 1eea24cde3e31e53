"""Export of rainkit's networks to ONNX, and a deraining engine on onnxruntime.

Needs the `export` extra (onnx, onnxruntime); without it every entry point fails with one line
saying what to install."""

from rainkit.export.onnx import OPSET, ExportResult, build_onnx, card_path, export_onnx

__all__ = ["OPSET", "ExportResult", "build_onnx", "card_path", "export_onnx"]
