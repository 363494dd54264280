"""Training throughput of the CPU demo (``bapose-train experiment=demo``): images/s through the real Lightning loop.

    python scripts/bench_training.py                  # writes benchmarks/training.md (~30 s on 2 idle cores)
    python scripts/bench_training.py --steps 20 --warmup 3
    python scripts/bench_training.py model.adaptive_impl=torch      # any train-config override

What is timed: ``--warmup`` untimed optimizer steps (worker start-up, oneDNN kernel selection), then ``--steps``
timed ones of the demo config's own datamodule, model, loss, optimizer and ``lightning.Trainer`` (CPU). A step is
Lightning's ``on_train_batch_start`` -> ``on_train_batch_end``: forward, loss, backward, optimizer update, logging.
Between steps the loop waits for the next batch from the dataloader workers (decoding, augmentation and target
encoding run there): that is the data wait. Not timed: building everything, generating the synthetic dataset on
first use (cached afterwards), validation (``limit_val_batches=0``), checkpoints and loggers (off).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from bapose.paths import config_dir
from bapose.utils.bench import machine, write_section


class StepTimer(L.Callback):
    """Wall-clock start and end of every training batch, and its size."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.sizes: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.sizes.append(int(batch["image"].shape[0]))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.ends.append(time.perf_counter())


def demo_overrides() -> tuple[list[str], str]:
    """``experiment=demo`` when that config exists; else the train defaults, which are the demo's data and model."""
    if (config_dir() / "experiment" / "demo.yaml").is_file():
        return ["experiment=demo"], "experiment=demo"
    return [], "the train-config defaults (conf/experiment/demo.yaml not found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    parser.add_argument("overrides", nargs="*", help="extra train-config overrides (Hydra syntax)")
    args = parser.parse_args()

    from bapose.build import build_datamodule, build_module, compose_config

    base, described = demo_overrides()
    cfg = compose_config([*base, *args.overrides])
    t0 = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()  # generates the synthetic set on first use: start-up, not training
    prepare_s = time.perf_counter() - t0
    module = build_module(cfg, codec=datamodule.codec)
    timer = StepTimer()
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, max_epochs=1, max_steps=args.warmup + args.steps,
        limit_train_batches=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0)
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - t_fit

    done = len(timer.ends)
    if done < args.warmup + args.steps:
        sys.exit(f"bench_training: only {done} training steps ran (expected {args.warmup + args.steps}); "
                 f"is the training set smaller than {args.warmup + args.steps} batches of {cfg.data.batch_size}?")
    w = args.warmup
    steps = [e - s for s, e in zip(timer.starts[w:], timer.ends[w:])]
    waits = [timer.starts[i] - timer.ends[i - 1] for i in range(max(w, 1), done)]
    images = sum(timer.sizes[w:])
    span = timer.ends[-1] - timer.ends[w - 1] if w > 0 else timer.ends[-1] - timer.starts[0]
    throughput, compute_rate = images / span, images / sum(steps)
    wait_share = sum(waits) / span
    net = module.net
    impl = next((m.impl for m in net.modules() if hasattr(m, "impl")), "-")
    size, batch = int(cfg.data.input_size), int(cfg.data.batch_size)
    print(f"{throughput:.2f} img/s end to end, {compute_rate:.2f} img/s in steps, step median "
          f"{statistics.median(steps):.2f} s, data wait {wait_share:.0%}", flush=True)

    md = "\n".join([
        "## Training throughput (CPU demo)",
        "",
        f"`{shlex.join(['python', 'scripts/bench_training.py', *sys.argv[1:]])}`: {described}"
        f"{' + ' + ' '.join(args.overrides) if args.overrides else ''}: model `{type(net).__name__}` "
        f"`{getattr(net, 'name', '')}` (adaptive_impl={impl}), data `{cfg.data.name}` at {size}x{size}, batch {batch}, "
        f"{cfg.data.num_workers} dataloader workers, optimizer `{cfg.optimizer._target_}`, trainer precision "
        f"`{cfg.trainer.precision}`, {torch.get_num_threads()} torch threads in the training process. "
        f"Machine: {machine()}.",
        "",
        f"Timed: {args.steps} optimizer steps after {args.warmup} warm-up steps, through the real `lightning.Trainer`. "
        "A step = `on_train_batch_start` -> `on_train_batch_end` (forward, loss, backward, Adam update, logging); "
        "end to end = the same steps plus the waits for the next batch between them. Not timed: building the model "
        f"and data, generating the synthetic set ({prepare_s:.1f} s here, cached after the first run), validation, "
        f"checkpoints, loggers. The whole `fit` call took {fit_s:.0f} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| images/s end to end | {throughput:.2f} |",
        f"| images/s inside the steps | {compute_rate:.2f} |",
        f"| step time median s (batch {batch}) | {statistics.median(steps):.2f} |",
        f"| share of wall time waiting for data | {wait_share:.1%} |",
        "",
        "No reference for this figure exists (the paper trains on GPUs); it is the demo's own baseline to compare "
        "runs of this script against.",
    ])
    print(f"wrote {write_section('training', md)}")


if __name__ == "__main__":
    main()
