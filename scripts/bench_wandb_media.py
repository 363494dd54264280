"""What the W&B validation images cost the CPU demo: drawing ``draw_images`` predictions per validation vs a validation.

    python scripts/bench_wandb_media.py                         # writes benchmarks/wandb_media.md (~1 min)
    python scripts/bench_wandb_media.py --ckpt outputs/train/runs/<stamp>/checkpoints/epoch_006.ckpt

What is timed, on the demo config (``experiment=demo``: 128-px scenes, flip-test validation on 64 images):
``bapose.training.callbacks.draw_predictions`` on the first ``draw_images`` validation images plus the
``wandb.Image`` encoding the W&B logger does (what ``WandbMedia`` adds to each validation of fit), against the
forward + decode of the whole validation set in its batches (what each validation already costs, scoring excluded).
The weights are random unless ``--ckpt`` gives a trained checkpoint (more people decoded and drawn).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import lightning as L
import numpy as np
import torch

from bapose.utils.bench import machine, timeit, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a trained demo checkpoint (default: random weights)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import wandb

    from bapose.build import build_datamodule, build_module, compose_config
    from bapose.training.callbacks import draw_predictions

    cfg = compose_config(["experiment=demo"])
    L.seed_everything(int(cfg.seed), verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    module = build_module(cfg, codec=datamodule.codec)
    module.meta = datamodule.meta
    if args.ckpt:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state, strict=False)
    module.eval()
    count = int(cfg.draw_images)
    dataset = datamodule.val_dataset

    def draw() -> None:
        drawn = draw_predictions(module, dataset, count)
        [wandb.Image(im, caption=f"image {i}") for i, im in drawn]

    loader = datamodule.val_dataloader()
    batches = list(loader)

    def validate() -> None:
        for batch in batches:
            module.predict_poses(batch["image"], flip=module.val_flip, scales=module.val_scales)

    draw_s = timeit(draw, repeat=args.repeat)
    val_s = timeit(validate, repeat=args.repeat)
    people = [int(np.count_nonzero(r.scores.numpy() >= 0.3))
              for r in (module.predict_poses(dataset[i]["image"][None], flip=True)[0] for i in range(count))]
    epochs = int(cfg.trainer.max_epochs)
    print(f"draw {count} images: {draw_s:.3f} s; validation forward+decode of {len(dataset)} images: {val_s:.2f} s",
          flush=True)
    md = "\n".join([
        "## W&B validation images (CPU demo)",
        "",
        f"`{shlex.join(['python', 'scripts/bench_wandb_media.py', *sys.argv[1:]])}`: `experiment=demo` "
        f"({'weights of ' + args.ckpt if args.ckpt else 'random weights'}; {sum(people)} people drawn with score "
        f">= 0.3), {torch.get_num_threads()} torch threads. Machine: {machine()}.",
        "",
        f"What `WandbMedia` adds to each validation of fit: the predictions drawn on the first {count} validation "
        f"images (flip test, as validation) and their `wandb.Image` encoding; against the forward + decode of the "
        f"{len(dataset)} validation images that every validation runs anyway (COCO scoring not included). "
        f"Median of {args.repeat}.",
        "",
        "| measure | seconds |",
        "|---|---|",
        f"| drawing {count} images + wandb.Image, per validation | {draw_s:.3f} |",
        f"| validation forward + decode ({len(dataset)} images, batch {cfg.data.val_batch_size}) | {val_s:.2f} |",
        f"| drawing over the demo's {epochs} validations | {draw_s * epochs:.1f} |",
        "",
        f"Drawing adds {draw_s / val_s:.0%} to a validation's forward pass; over the {epochs} epochs of "
        f"`make train` (≈11 min) it is {draw_s * epochs:.1f} s.",
    ])
    print(f"wrote {write_section('wandb_media', md)}")


if __name__ == "__main__":
    main()
