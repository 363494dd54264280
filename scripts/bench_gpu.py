"""GPU training speed of BAPose-W32 at 512: fp32, bf16 autocast, channels_last, torch.compile; data-wait share.

    python scripts/bench_gpu.py                 # writes benchmarks/gpu.md (every row "not measured" without CUDA)
    python scripts/bench_gpu.py --batch 32 --steps 30
    # check every code path on a CPU, tiny, printing rows and writing nothing:
    python scripts/bench_gpu.py --device cpu --model bapose_w18s --size 64 --batch 2 --warmup 1 --steps 1 \
        --data-steps 2 --workers 2 --dry-run

Speed options: one full optimizer step (forward, BAPose loss, backward, Adam update) on a fixed random batch of
codec-shaped targets, so the rows measure the model and nothing else; images/s over ``--steps`` steps after
``--warmup`` (which absorbs cuDNN autotuning and torch.compile's compilation, timed separately); peak memory =
``torch.cuda.max_memory_allocated`` over the row. Data wait: the same step (bf16 autocast + channels_last) fed by
the real datamodule (generated crowd scenes at the input size, ``--workers`` workers, pinned memory); the share of
wall time spent in ``next(loader)`` plus the host-to-device copy, each step synchronised.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bapose.training import BAPoseLoss
from bapose.utils.bench import machine, write_section

NOT_MEASURED = "not measured (no GPU on this machine)"


@dataclass(frozen=True)
class SpeedOption:
    """One row: autocast dtype (None = fp32), channels-last memory format, torch.compile."""

    name: str
    amp: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False


OPTIONS = (
    SpeedOption("fp32 eager"),
    SpeedOption("bf16 autocast", amp=torch.bfloat16),
    SpeedOption("fp32 channels_last", channels_last=True),
    SpeedOption("bf16 autocast + channels_last", amp=torch.bfloat16, channels_last=True),
    SpeedOption("fp32 torch.compile", compile=True),
    SpeedOption("bf16 autocast + torch.compile", amp=torch.bfloat16, compile=True),
)
# the data-wait row runs the usual fast eager setting
DATA_OPTION = OPTIONS[3]


def build_net(model: str, k: int, impl: str | None) -> nn.Module:
    """``conf/model/<model>.yaml`` with K joints, random init (offline)."""
    from bapose.build import compose_config
    from bapose.models import build_model

    overrides = [f"model={model}", "data=coco", f"data.num_keypoints={k}"]
    if impl:
        overrides.append(f"model.adaptive_impl={impl}")
    cfg = compose_config(overrides, config_name="profile")
    return build_model(cfg.model, pretrained=False)


def random_batch(b: int, k: int, size: int, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """A batch shaped like the datamodule's: uint8 images and codec targets (grid = size / 4)."""
    g = torch.Generator().manual_seed(seed)
    h = size // 4
    heatmaps = torch.rand(b, k + 1, h, h, generator=g) ** 8  # mostly near 0, like Gaussian targets
    offset_weights = (torch.rand(b, 1, h, h, generator=g) < 0.05).float() * 0.02
    batch = {"image": torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g),
             "heatmaps": heatmaps, "heatmap_weights": torch.where(heatmaps > 0.1, 1.0, 0.1),
             "offsets": torch.randn(b, 2 * k, h, h, generator=g) * 4, "offset_weights": offset_weights}
    return {key: v.to(device) for key, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, option: SpeedOption,
              device: torch.device) -> Callable[[dict[str, Tensor]], None]:
    """A function running one optimizer step on a batch (asynchronous on CUDA: the caller synchronises)."""
    model = torch.compile(net) if option.compile else net
    autocast = (torch.autocast(device.type, dtype=option.amp) if option.amp is not None
                else contextlib.nullcontext())
    fmt = torch.channels_last if option.channels_last else torch.contiguous_format

    def step(batch: dict[str, Tensor]) -> None:
        x = batch["image"].float().div_(255).contiguous(memory_format=fmt)
        opt.zero_grad(set_to_none=True)
        with autocast:
            heatmaps, offsets = model(x)
        # the loss in fp32, as BAPoseModule computes it outside the net
        terms = loss_fn(heatmaps.float(), offsets.float(), batch["heatmaps"], batch["heatmap_weights"],
                        batch["offsets"], batch["offset_weights"])
        terms["loss"].backward()
        opt.step()
    return step


def setup_option(args: argparse.Namespace, option: SpeedOption, device: torch.device,
                 ) -> tuple[Callable[[dict[str, Tensor]], None], nn.Module]:
    """A fresh seeded net in train mode on ``device`` (channels-last if asked), Adam, and its step function."""
    torch.manual_seed(0)
    net = build_net(args.model, args.keypoints, args.adaptive_impl).to(device)
    if option.channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    return make_step(net, opt, BAPoseLoss(), option, device), net


def measure_option(args: argparse.Namespace, option: SpeedOption, device: torch.device) -> dict[str, Any]:
    """images/s, peak memory and warm-up (compile) time of one speed option on a fixed random batch."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step, net = setup_option(args, option, device)
    batch = random_batch(args.batch, args.keypoints, args.size, device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step(batch)
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    sync(device)
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del step, net
    return {"ips": args.batch * args.steps / elapsed, "step_ms": elapsed / args.steps * 1e3, "peak_gib": peak,
            "warmup_s": warmup_s}


def measure_data_wait(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Share of step wall time spent waiting for the real dataloader (``--workers`` workers) and the copy."""
    from bapose.build import build_datamodule, compose_config

    cfg = compose_config([
        "data=synthetic", f"data.input_size={args.size}", f"data.synthetic.image_size={args.size}",
        f"data.num_keypoints={args.keypoints}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
        f"data.pin_memory={device.type == 'cuda'}",
        f"data.synthetic.num_train={max(args.batch * (args.warmup + args.data_steps + 1), 64)}",
        *args.data_overrides])
    dm = build_datamodule(cfg)
    t0 = time.perf_counter()
    dm.prepare_data()  # generates the scenes on first use: start-up, not measured
    dm.setup("fit")
    prepare_s = time.perf_counter() - t0
    step, net = setup_option(args, DATA_OPTION, device)
    loader = iter(dm.train_dataloader())
    waits, totals = [], []
    for i in range(args.warmup + args.data_steps):
        t0 = time.perf_counter()
        batch = next(loader)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, Tensor)}
        sync(device)
        t1 = time.perf_counter()
        step(batch)
        sync(device)
        if i >= args.warmup:  # the first batches wait for the workers to start
            waits.append(t1 - t0)
            totals.append(time.perf_counter() - t0)
    del loader, step, net
    return {"share": sum(waits) / sum(totals), "ips": args.batch * len(totals) / sum(totals),
            "wait_ms": sum(waits) / len(waits) * 1e3, "prepare_s": prepare_s, "data": cfg.data.name}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="bapose_w32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--keypoints", type=int, default=17)
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (cuDNN autotune, compilation)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per speed option")
    parser.add_argument("--data-steps", type=int, default=30, help="timed steps of the data-wait measurement")
    parser.add_argument("--workers", type=int, default=8, help="dataloader workers of the data-wait measurement")
    parser.add_argument("--adaptive-impl", choices=("auto", "torchvision", "torch"), default=None)
    parser.add_argument("--data-overrides", nargs="*", default=[],
                        help="train-config overrides for the data-wait run, e.g. data=coco data.root=/data/coco")
    parser.add_argument("--dry-run", action="store_true", help="print the rows, write no section")
    args = parser.parse_args()
    cmd = shlex.join(["python", "scripts/bench_gpu.py", *sys.argv[1:]])
    device = torch.device(args.device)
    header = ["## GPU training speed: BAPose-W32 at 512 with speed options", ""]
    table = ["| option | images/s | step ms | peak memory GiB | warm-up s (incl. compile) | images/s vs fp32 eager |",
             "|---|---|---|---|---|---|"]

    if device.type == "cuda" and not torch.cuda.is_available():
        rows = [f"| {o.name} | {NOT_MEASURED} | {NOT_MEASURED} | {NOT_MEASURED} | {NOT_MEASURED} | {NOT_MEASURED} |"
                for o in OPTIONS]
        md = "\n".join([
            *header,
            f"`{cmd}` on: {machine()}. CUDA is not available here, so nothing was measured; run this script on a "
            "GPU machine to fill the tables.",
            "", *table, *rows, "",
            "| measure | value |", "|---|---|",
            f"| share of step time waiting on data ({args.workers} workers) | {NOT_MEASURED} |",
        ])
        print(md)
        if not args.dry_run:
            print(f"wrote {write_section('gpu', md)}")
        return

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels in the warm-up
    results = {}
    for option in OPTIONS:
        results[option.name] = measure_option(args, option, device)
        r = results[option.name]
        print(f"{option.name}: {r['ips']:.1f} img/s, {r['step_ms']:.1f} ms/step, peak {r['peak_gib']} GiB, "
              f"warm-up {r['warmup_s']:.1f} s", flush=True)
    data = measure_data_wait(args, device)
    print(f"data wait: {data['share']:.1%} of step time, {data['ips']:.1f} img/s with {args.workers} workers",
          flush=True)

    base = results[OPTIONS[0].name]["ips"]
    rows = []
    for option in OPTIONS:
        r = results[option.name]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        rows.append(f"| {option.name} | {r['ips']:.1f} | {r['step_ms']:.1f} | {peak} | {r['warmup_s']:.1f} | "
                    f"{r['ips'] / base:.2f} |")
    md = "\n".join([
        *header,
        f"`{cmd}` on: {machine()}. Model `{args.model}` at {args.size}x{args.size}, batch {args.batch}, K="
        f"{args.keypoints}, Adam, one full optimizer step per iteration on a fixed random batch (model only, no "
        f"data loading); images/s over {args.steps} steps after {args.warmup} warm-up steps; peak memory = "
        "`torch.cuda.max_memory_allocated` over the row; loss in fp32 outside autocast, as the LightningModule does.",
        "", *table, *rows, "",
        f"Data wait: the `{DATA_OPTION.name}` step fed by the real datamodule (`{data['data']}` at {args.size}, "
        f"{args.workers} workers{', pinned memory' if device.type == 'cuda' else ''}), {args.data_steps} steps after "
        f"{args.warmup}, each synchronised; "
        f"generating the scenes took {data['prepare_s']:.0f} s first (not timed).",
        "",
        "| measure | value |", "|---|---|",
        f"| share of step time waiting on data ({args.workers} workers) | {data['share']:.1%} |",
        f"| wait per step ms | {data['wait_ms']:.1f} |",
        f"| images/s with data loading | {data['ips']:.1f} |",
    ])
    print(md)
    if not args.dry_run:
        print(f"wrote {write_section('gpu', md)}")


if __name__ == "__main__":
    main()
