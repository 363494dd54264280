"""ONNX export of a BAPose / DEKR net with dynamic batch and input size, and its numeric parity check.

The adaptive blocks use their pure-PyTorch kernel while exporting (``grid_sample`` + matmul, no custom op), so the
graph runs in any ONNX runtime. The TorchScript-based exporter (``dynamo=False``) is used: on this model it exports
in ~2 s with truly dynamic ``batch x H x W`` axes, where the dynamo exporter took ~30 s and specialised the batch.

The graph: input ``images`` float ``(B, 3, H, W)`` in [0, 1] (H, W multiples of 32; normalised inside), outputs
``heatmaps (B, K+1, H/4, W/4)`` (center last) and ``offsets (B, 2K, H/4, W/4)``. Decode them with
:func:`bapose.export.decode_numpy`. The model's ``metadata_props`` carry K, the joint names, the flip permutation,
stride and the codec's decode knobs, so a deployment needs nothing but the ``.onnx`` file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bapose.errors import BAPoseError, ConfigError

__all__ = ["ParityError", "export_onnx", "onnx_parity", "run_onnx"]


class ParityError(BAPoseError, RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


def _torch_impl_copy(net: nn.Module) -> nn.Module:
    """A CPU eval copy of ``net`` whose adaptive blocks use the exportable pure-PyTorch kernel."""
    net = copy.deepcopy(net).cpu().eval()
    if hasattr(net, "set_adaptive_impl"):
        net.set_adaptive_impl("torch")
    return net


def export_onnx(net: nn.Module, path: str | os.PathLike, opset: int = 17, example_hw: tuple[int, int] = (256, 256),
                dynamic: bool = True, metadata: Mapping[str, Any] | None = None) -> Path:
    """Export ``net`` to ONNX at ``path`` (a single file, weights inside).

    Args:
        net: ``images (B, 3, H, W) -> (heatmaps, offsets)``; left untouched (a CPU copy is exported).
        opset: ONNX opset (``grid_sample`` needs >= 16).
        example_hw: size of the tracing input, multiples of 32; with ``dynamic`` any other size works later.
        dynamic: batch, height and width as dynamic axes.
        metadata: extra ``metadata_props`` (values json-encoded when not strings).

    Returns:
        the written path.
    """
    if opset < 16:
        raise ConfigError(f"export: field 'opset' is {opset}; expected >= 16 (GridSample, used by the adaptive "
                          f"convs, needs opset 16)")
    h, w = (int(v) for v in example_hw)
    if h % 32 or w % 32 or h <= 0 or w <= 0:
        raise ConfigError(f"export: example input size {(h, w)}; expected positive multiples of 32")
    import onnx  # optional dependency group `export`

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _torch_impl_copy(net)
    example = torch.rand(1, 3, h, w)
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "heatmaps": {0: "batch", 2: "grid_h", 3: "grid_w"},
            "offsets": {0: "batch", 2: "grid_h", 3: "grid_w"}} if dynamic else None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # tracing turns the net's input-shape checks into constants; that is expected and harmless here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            torch.onnx.export(model, (example,), str(tmp), input_names=["images"],
                              output_names=["heatmaps", "offsets"], opset_version=int(opset), dynamic_axes=axes,
                              do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        props = {"producer": "bapose", "input": "images float (B, 3, H, W) in [0, 1], H and W multiples of 32",
                 "outputs": "heatmaps (B, K+1, H/4, W/4) center last; offsets (B, 2K, H/4, W/4) (x0, y0, ...)",
                 "num_keypoints": getattr(net, "num_keypoints", None), "stride": getattr(net, "stride", 4)}
        props.update(metadata or {})
        onnx.helper.set_model_props(proto, {str(k): v if isinstance(v, str) else json.dumps(v)
                                            for k, v in props.items()})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def run_onnx(path: str | os.PathLike, images: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run an exported model with onnxruntime (CPU): ``images (B, 3, H, W)`` float32 -> ``(heatmaps, offsets)``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    heatmaps, offsets = session.run(["heatmaps", "offsets"], {"images": np.ascontiguousarray(images, np.float32)})
    return heatmaps, offsets


def onnx_parity(net: nn.Module, path: str | os.PathLike, images: torch.Tensor, threads: int | None = None
                ) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch (the net as it is, its own adaptive kernel) on ``images``.

    Returns:
        ``{"heatmaps": max|diff|, "offsets": max|diff|, "heatmaps_max": max|heatmaps|, "offsets_max": max|offsets|}``
        (the magnitudes say how demanding the absolute difference is).
    """
    images = images.float().cpu()
    model = copy.deepcopy(net).cpu().eval()
    with torch.no_grad():
        ref_h, ref_o = model(images)
    got_h, got_o = run_onnx(path, images.numpy(), threads=threads)
    if got_h.shape != tuple(ref_h.shape) or got_o.shape != tuple(ref_o.shape):
        raise ParityError(f"ONNX model '{path}': output shapes heatmaps {got_h.shape}, offsets {got_o.shape}; "
                          f"expected PyTorch's {tuple(ref_h.shape)} and {tuple(ref_o.shape)}")
    return {"heatmaps": float(np.abs(got_h - ref_h.numpy()).max()),
            "offsets": float(np.abs(got_o - ref_o.numpy()).max()),
            "heatmaps_max": float(np.abs(ref_h.numpy()).max()), "offsets_max": float(np.abs(ref_o.numpy()).max())}
