"""``bapose-export``: a checkpoint to ONNX (dynamic batch and input size), checked against PyTorch on a real image.

``export(cfg)`` is a plain function; ``main()`` the thin Hydra entry point over ``conf/export.yaml``::

    bapose-export ckpt_path=outputs/train/runs/<stamp>/checkpoints/last.ckpt            # -> <run dir>/model.onnx
    bapose-export ckpt_path=... output=deploy/bapose_w32.onnx opset=17 image=photo.jpg tolerance=1e-4

The check runs onnxruntime and PyTorch on the same real image (``image=``; default one of ``../shared/data``'s COCO
sample images, else a generated picture), resized as evaluation does, and on a second batch of another size (the
dynamic axes). It prints the max abs difference of heatmaps and offsets and fails (exit code 1) above ``tolerance``.
The deployment path is checked too (``checks.people``): the ONNX outputs decoded by :func:`bapose.export.decode_numpy`
with the file's own decode knobs against the torch :class:`~bapose.predictor.Predictor` on the same image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bapose.io import write_json
from bapose.data.inputs import default_image, try_read_image
from bapose.data.transforms import EvalTransform
from bapose.errors import ConfigError, DataError
from bapose.export.decode import decode_knobs, decode_numpy
from bapose.export.onnx import ParityError, export_onnx, onnx_parity, run_onnx
from bapose.loading import LoadedModel, load_model
from bapose.predictor import Predictor
from bapose.utils.entry import hydra_entry


def _to_batch(image: np.ndarray, input_size: int, resize: str | None = None) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float ``(1, 3, Hp, Wp)`` in [0, 1], resized and padded as evaluation does."""
    resized = EvalTransform(input_size, resize=resize)(image)["image"]
    return torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0


def _parity_image(cfg: DictConfig) -> tuple[np.ndarray, str]:
    """``cfg.image``, or a COCO sample photo (:func:`bapose.data.inputs.default_image`)."""
    if not cfg.image:
        return default_image()
    image = try_read_image(Path(str(cfg.image)))
    if image is None:
        raise DataError(f"field 'image': '{cfg.image}' cannot be read as an image")
    return image, str(cfg.image)


def _metadata(model: LoadedModel) -> dict[str, Any]:
    """What the ONNX file carries: the joint set, input size, decode knobs, resize rule and source checkpoint."""
    meta = model.meta
    return {"dataset": meta.name, "keypoints": list(meta.keypoints), "flip_index": list(meta.flip_index),
            "skeleton": [list(p) for p in meta.skeleton], "input_size": model.input_size,
            "decode": decode_knobs(model.codec, meta.sigmas),
            # how images are resized before the net: pad (short side = input_size, padded right/bottom) | dekr
            "eval_resize": model.info.eval_resize or "pad", "checkpoint": str(model.path)}


def people_parity(model: LoadedModel, output: Path, images: torch.Tensor, knobs: dict[str, Any],
                  threads: int | None = None) -> dict[str, Any]:
    """The deployment path against the torch predictor on ``images``: onnxruntime's outputs decoded by
    :func:`bapose.export.decode_numpy` with ``knobs`` (the file's), and :class:`~bapose.predictor.Predictor` on the
    torch net (single scale, no flip), per image.

    Returns:
        ``{"people": [torch counts], "people_onnx": [numpy counts], "max_pose_diff": px}``: the largest difference
        (x, y and joint score) between a torch person and the nearest numpy one (inf when the counts differ).
    """
    heatmaps, offsets = run_onnx(output, images.float().cpu().numpy(), threads=threads)
    got = decode_numpy(heatmaps, offsets, **knobs)
    with torch.no_grad():
        ref = Predictor(model.net.cpu().eval(), model.codec)(images.float().cpu())
    worst = 0.0
    for r, (poses, _) in zip(ref, got, strict=True):
        want = r.poses.numpy().astype(np.float64)
        if len(want) != len(poses):
            worst = float("inf")
        elif len(want):
            worst = max(worst, float(np.abs(want[:, None] - poses[None]).max((2, 3)).min(1).max()))
    return {"people": [len(r.poses) for r in ref], "people_onnx": [len(p) for p, _ in got], "max_pose_diff": worst}


def _print_checks(checks: dict[str, Any], report: dict[str, Any]) -> None:
    for name, c in checks.items():
        if name == "people":
            print(f"bapose-export deployment decode (numpy on onnx outputs vs the torch predictor): people "
                  f"{c['people_onnx']} vs {c['people']}, max |difference| {c['max_pose_diff']:.3e}", flush=True)
            continue
        print(f"bapose-export parity ({name}): max |onnx - torch| heatmaps {c['heatmaps']:.3e} (max |value| "
              f"{c['heatmaps_max']:.3g}), offsets {c['offsets']:.3e} (max |value| {c['offsets_max']:.3g})", flush=True)
    print(f"bapose-export: {report['output']} ({report['bytes'] / 1e6:.1f} MB), parity image {report['image']}, "
          f"tolerance {report['tolerance']:g}: {'OK' if report['passed'] else 'FAILED'}", flush=True)


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` and check it; returns the report (also ``export.json`` beside it).

    Raises:
        ParityError: the max abs difference of heatmaps or offsets is above ``cfg.tolerance``.
    """
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if str(cfg.format).lower() != "onnx":
        raise ConfigError(f"field 'format' is {cfg.format!r}; expected 'onnx'")
    model = load_model(cfg.ckpt_path, model=cfg.get("model"), model_from_checkpoint=bool(cfg.model_from_checkpoint),
                       meta=cfg.meta, input_size=cfg.input_size,
                       codec=OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") else None,
                       prefer_ema=bool(cfg.prefer_ema), device="cpu")
    output = Path(str(cfg.output)) if cfg.output else Path(str(cfg.paths.output_dir)) / "model.onnx"
    image, source = _parity_image(cfg)
    resize = model.info.eval_resize
    x = _to_batch(image, model.input_size, resize)
    metadata = _metadata(model)
    export_onnx(model.net, output, opset=int(cfg.opset), example_hw=tuple(x.shape[-2:]), dynamic=bool(cfg.dynamic),
                metadata=metadata)

    threads = cfg.num_threads
    checks: dict[str, Any] = {"image": onnx_parity(model.net, output, x, threads=threads)}
    if cfg.dynamic:
        # the dynamic axes: a batch of 2 at another size (the same photo at a different short side, flipped)
        other = max(32, model.input_size - 32) if model.input_size > 64 else model.input_size + 32
        x2 = _to_batch(image, other, resize)
        checks["batch2"] = onnx_parity(model.net, output, torch.cat([x2, x2.flip(-1)]), threads=threads)
    tol = float(cfg.tolerance)
    worst = max(max(c["heatmaps"], c["offsets"]) for c in checks.values())
    checks["people"] = people_parity(model, output, x, metadata["decode"], threads)
    report = {"output": str(output), "bytes": output.stat().st_size, "opset": int(cfg.opset), "image": source,
              "input_shape": list(x.shape), "tolerance": tol, "checks": checks, "max_abs_diff": worst,
              "passed": worst <= tol}
    write_json(output.with_suffix(".json"), report)
    _print_checks(checks, report)
    if not report["passed"]:
        raise ParityError(f"ONNX model '{output}': max abs difference {worst:.3e} to PyTorch on '{source}' is above "
                          f"field 'tolerance' {tol:g}; expected the exported graph to reproduce the net (checks: "
                          f"{checks})")
    return report


# the console script `bapose-export`
main = hydra_entry("export", "bapose-export", export)

if __name__ == "__main__":
    main()
