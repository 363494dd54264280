"""``bapose-export``: a checkpoint to ONNX (dynamic batch and input size), checked against PyTorch on a real image.

``export(cfg)`` is a plain function; ``main()`` the thin Hydra entry point over ``conf/export.yaml``::

    bapose-export ckpt_path=outputs/train/runs/<stamp>/checkpoints/last.ckpt            # -> <run dir>/model.onnx
    bapose-export ckpt_path=... output=deploy/bapose_w32.onnx opset=17 image=photo.jpg tolerance=1e-4

The check runs onnxruntime and PyTorch on the same real image (``image=``; default one of ``../shared/data``'s COCO
sample images, else a generated picture), resized as evaluation does, and on a second batch of another size (the
dynamic axes). It prints the max abs difference of heatmaps and offsets and fails (exit code 1) above ``tolerance``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import bapose.utils.logging as blog  # registers the ${bapose.*} resolvers before Hydra composes
from bapose.cli.predict import read_image
from bapose.loading import load_model
from bapose.data.transforms import EvalTransform
from bapose.errors import ConfigError, DataError, exit_on_error
from bapose.export.onnx import ParityError, export_onnx, onnx_parity
from bapose.paths import config_dir

log = logging.getLogger("bapose")


def default_image() -> tuple[np.ndarray, str]:
    """A real photo for the parity check: a COCO sample image from ``$BAPOSE_SHARED/data`` or ``../shared/data``
    beside the checkout; when neither exists, a generated picture (gradients, shapes, noise)."""
    repo = Path(__file__).resolve().parents[3]
    roots = [Path(os.environ["BAPOSE_SHARED"])] if os.environ.get("BAPOSE_SHARED") else []
    roots.append(repo.parent / "shared")
    for root in roots:
        for p in sorted((root / "data" / "coco_sample").glob("*.jpg")):
            image = read_image(p)
            if image is not None:
                return image, str(p)
    return generated_image(), "generated"


def generated_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 test picture with edges, flat areas and texture (not a constant: parity on a
    constant image would hide errors in the sampling of the adaptive convs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 23 + yy / 31)], -1) * 255
    img = img.astype(np.uint8)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(img, (x, y), int(rng.integers(10, 80)), c, -1)
        cv2.line(img, (x, y), (int(rng.integers(0, width)), int(rng.integers(0, height))), c, 3)
    noise = rng.normal(0, 8, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _to_batch(image: np.ndarray, input_size: int, resize: str | None = None) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float ``(1, 3, Hp, Wp)`` in [0, 1], resized and padded as evaluation does."""
    resized = EvalTransform(input_size, resize=resize)(image)["image"]
    return torch.from_numpy(resized).permute(2, 0, 1)[None].float() / 255.0


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` and check it; returns the report (also ``export.json`` beside it).

    Raises:
        ParityError: the max abs difference of heatmaps or offsets is above ``cfg.tolerance``.
    """
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt != "onnx":
        raise ConfigError(f"field 'format' is {cfg.format!r}; expected 'onnx'")
    model = load_model(cfg.ckpt_path, model=cfg.get("model"), model_from_checkpoint=cfg.get("model_from_checkpoint", True),
                       meta=cfg.get("meta"), input_size=cfg.get("input_size"),
                       codec=OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") else None,
                       prefer_ema=bool(cfg.get("prefer_ema", True)), device="cpu")
    output = Path(str(cfg.output)) if cfg.get("output") else Path(str(cfg.paths.output_dir)) / "model.onnx"

    if cfg.get("image"):
        image = read_image(Path(str(cfg.image)))
        if image is None:
            raise DataError(f"field 'image': '{cfg.image}' cannot be read as an image")
        source = str(cfg.image)
    else:
        image, source = default_image()
    resize = model.info.get("eval_resize")
    x = _to_batch(image, model.input_size, resize)

    codec = model.codec
    meta = model.meta
    metadata = {"dataset": meta.name, "keypoints": list(meta.keypoints), "flip_index": list(meta.flip_index),
                "skeleton": [list(p) for p in meta.skeleton], "input_size": model.input_size,
                "decode": {"stride": codec.stride, "max_people": codec.max_people,
                           "center_threshold": codec.center_threshold, "nms_kernel": codec.nms_kernel,
                           "pose_nms": codec.nms_rule, "pose_nms_ratio": codec.pose_nms_ratio,
                           "pose_nms_fraction": codec.pose_nms_fraction, "pose_nms_oks": codec.pose_nms_oks,
                           "oks_sigmas": list(codec.oks_sigmas or meta.sigmas),
                           "max_people_after_nms": codec.max_people_after_nms,
                           "refine_radius": int(codec.refine_radius or 0), "grid_align": codec.align},
                # how images are resized before the net: pad (short side = input_size, padded right/bottom) | dekr
                "eval_resize": resize or "pad",
                "checkpoint": str(model.path)}
    export_onnx(model.net, output, opset=int(cfg.get("opset", 17)), example_hw=tuple(x.shape[-2:]),
                dynamic=bool(cfg.get("dynamic", True)), metadata=metadata)

    threads = cfg.get("num_threads")
    checks = {"image": onnx_parity(model.net, output, x, threads=threads)}
    if cfg.get("dynamic", True):
        # the dynamic axes: a batch of 2 at another size (the same photo at a different short side, flipped)
        other = max(32, model.input_size - 32) if model.input_size > 64 else model.input_size + 32
        x2 = _to_batch(image, other, resize)
        checks["batch2"] = onnx_parity(model.net, output, torch.cat([x2, x2.flip(-1)]), threads=threads)
    tol = float(cfg.get("tolerance", 1e-4))
    worst = max(max(c["heatmaps"], c["offsets"]) for c in checks.values())
    report = {"output": str(output), "bytes": output.stat().st_size, "opset": int(cfg.get("opset", 17)),
              "image": source, "input_shape": list(x.shape), "tolerance": tol, "checks": checks,
              "max_abs_diff": worst, "passed": worst <= tol}
    blog.write_json(output.with_suffix(".json"), report)
    for name, c in checks.items():
        print(f"bapose-export parity ({name}): max |onnx - torch| heatmaps {c['heatmaps']:.3e} (max |value| "
              f"{c['heatmaps_max']:.3g}), offsets {c['offsets']:.3e} (max |value| {c['offsets_max']:.3g})", flush=True)
    print(f"bapose-export: {output} ({report['bytes'] / 1e6:.1f} MB), parity image {source}, tolerance {tol:g}: "
          f"{'OK' if report['passed'] else 'FAILED'}", flush=True)
    if not report["passed"]:
        raise ParityError(f"ONNX model '{output}': max abs difference {worst:.3e} to PyTorch on '{source}' is above "
                          f"field 'tolerance' {tol:g}; expected the exported graph to reproduce the net (checks: "
                          f"{checks})")
    return report


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="export")
def main(cfg: DictConfig) -> None:
    logging.captureWarnings(True)  # skipped files etc. as log lines, not source excerpts
    exit_on_error("bapose-export", lambda: export(cfg))


if __name__ == "__main__":
    main()
