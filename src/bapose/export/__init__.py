"""Deployment: ONNX export with a parity check (:func:`export_onnx`, :func:`onnx_parity`) and a numpy-only decoder
for the exported model's outputs (:func:`decode_numpy`)."""

from bapose.export.decode import decode_knobs, decode_numpy, nms_kernel_for
from bapose.export.onnx import ParityError, export_onnx, onnx_parity, run_onnx

__all__ = ["ParityError", "decode_knobs", "decode_numpy", "export_onnx", "nms_kernel_for", "onnx_parity", "run_onnx"]
