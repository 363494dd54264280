"""``bapose-profile``: parameters, GFLOPs and forward latency of a model config (the paper's Table 2 columns)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from bapose import paths
from bapose.models import build_model, config_cost
from bapose.models.bapose import input_hw


def measure_latency_ms(net: torch.nn.Module, images: torch.Tensor, repeats: int, warmup: int = 1) -> float:
    """Median wall time in ms of ``net(images)`` in eval / inference mode over ``repeats`` runs."""
    net.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if images.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(images)
            if images.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def format_table(row: dict[str, Any]) -> str:
    """One-row markdown table of a profile result."""
    latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.1f}"
    h, w = row["input_size"]
    return ("| model | input | params (M) | GFLOPs | latency (ms) |\n|---|---|---|---|---|\n"
            f"| {row['model']} | {h}x{w} | {row['params_m']:.2f} | {row['gflops']:.2f} | {latency} |")


def profile(cfg: DictConfig, output_dir: str | Path | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Profile ``cfg.model`` at ``cfg.data.input_size``; write ``profile.json`` into ``output_dir`` if given.

    Returns ``{"model", "input_size" [H, W], "batch_size", "params_m", "gflops", "latency_ms", "threads",
    "device"}``; GFLOPs are multiply-adds of one image (the paper's convention), latency the median of
    ``cfg.repeats`` forwards of a ``(batch_size, 3, H, W)`` batch (None when ``repeats`` is 0).
    """
    h, w = input_hw(cfg.data.input_size)
    cost = config_cost(cfg.model, (h, w))
    latency = None
    if int(cfg.repeats) > 0:
        device = torch.device(cfg.device)
        net = build_model(cfg.model, pretrained=False).to(device)  # offline: timings do not depend on the weights
        images = torch.rand(int(cfg.batch_size), 3, h, w, device=device)
        threads = torch.get_num_threads()
        torch.set_num_threads(int(cfg.threads))
        try:
            latency = measure_latency_ms(net, images, int(cfg.repeats), int(cfg.warmup))
        finally:  # profile() is also called in-process (tests, notebooks): leave the thread pool as it was
            torch.set_num_threads(threads)
    name = model_name
    if name is None:
        name = str(OmegaConf.select(cfg, "model.backbone"))
        name = f"{'dekr' if cfg.model.get('decoder') is None else 'bapose'}_{name}"
    row = {"model": name, "input_size": [h, w], "batch_size": int(cfg.batch_size), "params_m": cost.params_m,
           "gflops": cost.gmacs, "latency_ms": latency, "threads": int(cfg.threads), "device": str(cfg.device)}
    print(format_table(row))
    if output_dir is not None:
        out = Path(output_dir) / "profile.json"
        out.write_text(json.dumps(row, indent=2) + "\n")
        print(f"wrote {out}")
    return row


@hydra.main(version_base="1.3", config_path=str(paths.config_dir()), config_name="profile")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    runtime = HydraConfig.get().runtime
    profile(cfg, output_dir=runtime.output_dir, model_name=runtime.choices.get("model"))


if __name__ == "__main__":
    main()
