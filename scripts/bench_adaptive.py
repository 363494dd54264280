"""Adaptive block speed: torchvision ``deform_conv2d`` vs the pure-PyTorch kernel, at the offset head's shapes.

    python scripts/bench_adaptive.py               # writes benchmarks/adaptive.md (~30-60 s on 2 cores)
    python scripts/bench_adaptive.py --threads 2 --size 128 --repeats 5

Shapes: K = 17 joints x 15 channels = 255 channels, grouped by joint, on a 128 x 128 grid (a 512 input at stride 4),
batch 1. Two levels are timed: the deformable conv alone (``bapose.models.deform_conv2d`` with the block's offsets)
and the whole ``AdaptiveBlock`` (transform conv -> offsets -> deformable conv -> BN -> residual -> ReLU), each as
forward (no grad) and forward+backward. Both kernels are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import torch
from torch import nn

from bapose.models import AdaptiveBlock, deform_conv2d
from bapose.utils.bench import machine, timeit, write_section

IMPLS = ("torchvision", "torch")


def make_block(channels: int, groups: int) -> AdaptiveBlock:
    """An adaptive block whose transform is not zero (a fresh block samples on the integer grid, a special case)."""
    torch.manual_seed(0)
    block = AdaptiveBlock(channels, groups)
    # A and t of a few tenths of a pixel: every tap lands between pixels, so bilinear sampling really runs
    nn.init.normal_(block.transform.weight, std=0.02)
    nn.init.normal_(block.transform.bias, std=0.3)
    return block


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--size", type=int, default=128, help="grid side (128 = 512 input / stride 4)")
    parser.add_argument("--joints", type=int, default=17)
    parser.add_argument("--channels", type=int, default=15, help="channels per joint")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median) after 1 warm-up")
    return parser.parse_args()


def parity(block: AdaptiveBlock, x: torch.Tensor, offset: torch.Tensor) -> dict:
    """How far the two kernels disagree: the block's output and the deformable conv's gradients (printed).

    A speed figure for a kernel that computes something else would mean nothing, so this runs before timing.
    """
    with torch.no_grad():
        block.eval()
        outs = {}
        for impl in IMPLS:
            block.impl = impl
            outs[impl] = block(x)
        block.train()
    out_diff = float((outs["torch"] - outs["torchvision"]).abs().max() / outs["torchvision"].abs().max())
    grads = {}
    for impl in IMPLS:
        leaves = [t.clone().requires_grad_(True) for t in (x, offset, block.weight.detach())]
        deform_conv2d(*leaves, impl=impl).square().mean().backward()
        grads[impl] = [t.grad for t in leaves]
    # relative to the largest entry of each gradient (input, offsets, weight)
    grad_diff = [float((a - b).abs().max() / b.abs().max()) for a, b in zip(grads["torch"], grads["torchvision"])]
    # the offset gradient of bilinear sampling jumps where a tap sits on an integer position: a float32 rounding
    # puts such a tap on different sides in the two kernels, so a handful of entries may differ a lot
    off_a, off_b = grads["torch"][1], grads["torchvision"][1]
    off_jumps = int(((off_a - off_b).abs() > 1e-3 * off_b.abs().max()).sum())
    print(f"parity: block output max diff {out_diff:.2e} of the largest output; gradient max diff / max entry: "
          f"input {grad_diff[0]:.2e}, offsets {grad_diff[1]:.2e} ({off_jumps} of {off_b.numel()} entries beyond "
          f"1e-3), weight {grad_diff[2]:.2e}")
    return {"out_diff": out_diff, "grad_diff": grad_diff, "off_jumps": off_jumps, "off_numel": off_b.numel()}


def time_passes(block: AdaptiveBlock, x: torch.Tensor, offset: torch.Tensor,
                repeats: int) -> dict[tuple[str, str], float]:
    """Seconds (median) per ``(kernel, pass)``: the deformable conv alone and the whole block, fwd and fwd+bwd."""
    times: dict[tuple[str, str], float] = {}
    x_grad = x.clone().requires_grad_(True)
    offset_grad = offset.clone().requires_grad_(True)
    for impl in IMPLS:
        block.impl = impl

        def conv_fwd() -> None:
            with torch.no_grad():
                deform_conv2d(x, offset, block.weight, impl=impl)

        def conv_train() -> None:
            deform_conv2d(x_grad, offset_grad, block.weight, impl=impl).square().mean().backward()
            x_grad.grad = offset_grad.grad = block.weight.grad = None

        def block_fwd() -> None:
            with torch.no_grad():
                block(x)

        def block_train() -> None:
            block(x_grad).square().mean().backward()
            x_grad.grad = None
            block.zero_grad(set_to_none=True)

        block.eval()
        for name, fn in (("conv fwd", conv_fwd), ("conv fwd+bwd", conv_train), ("block fwd", block_fwd)):
            times[impl, name] = timeit(fn, repeat=repeats, warmup=1)
        block.train()  # train-mode BN in the training pass
        times[impl, "block fwd+bwd"] = timeit(block_train, repeat=repeats, warmup=1)
        print(impl, {k[1]: round(v * 1e3, 1) for k, v in times.items() if k[0] == impl}, flush=True)
    return times


def markdown(args: argparse.Namespace, par: dict, times: dict[tuple[str, str], float]) -> str:
    """The ``benchmarks/adaptive.md`` section: the command, shapes and machine, the parity, the timing table."""
    c = args.channels * args.joints
    grad_diff = par["grad_diff"]
    rows = []
    for name in ("conv fwd", "conv fwd+bwd", "block fwd", "block fwd+bwd"):
        tv, pt = times["torchvision", name], times["torch", name]
        rows.append(f"| {name} | {tv * 1e3:.1f} | {pt * 1e3:.1f} | {tv / pt:.2f} |")
    return "\n".join([
        "## Adaptive block: torchvision `deform_conv2d` vs pure PyTorch (CPU)",
        "",
        f"`{shlex.join(['python', 'scripts/bench_adaptive.py', *sys.argv[1:]])}` ({args.threads} torch thread(s), "
        f"median of {args.repeats} after 1 warm-up). Shapes of the offset head: K={args.joints} joints x "
        f"{args.channels} ch = {c} channels in {args.joints} groups, grid {args.size}x{args.size}, batch 1, "
        "non-zero A and t (taps between pixels). "
        "`conv`: the deformable conv alone on the block's offsets; `block`: the whole `AdaptiveBlock` (transform "
        "conv, offsets, deformable conv, BN, residual, ReLU). fwd+bwd: a scalar loss, backward to the input, "
        "the offsets and the weights. "
        f"Machine: {machine()}.",
        "",
        f"Parity of the two kernels (float32, these shapes): block output max difference {par['out_diff']:.1e} of its "
        f"largest value; deformable-conv gradients, max difference over the largest entry: input {grad_diff[0]:.1e}, "
        f"weight {grad_diff[2]:.1e}, offsets {grad_diff[1]:.1e} with {par['off_jumps']} of {par['off_numel']:,} "
        "entries beyond 1e-3 (bilinear sampling's offset gradient jumps at integer positions; a tap within float32 "
        "rounding of one can land on either side; in float64 the kernels agree to 1e-15).",
        "",
        "| pass | torchvision ms | pure PyTorch ms | torchvision / PyTorch |",
        "|---|---|---|---|",
        *rows,
        "",
        "A ratio above 1 means the pure-PyTorch kernel (`adaptive_impl=torch`) is the faster one on this CPU.",
    ])


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    block = make_block(args.channels, args.joints)
    c = args.channels * args.joints
    x = torch.randn(1, c, args.size, args.size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        offset = block.offsets(x)
    par = parity(block, x, offset)  # first: see parity()
    times = time_passes(block, x, offset, args.repeats)
    print(f"wrote {write_section('adaptive', markdown(args, par, times))}")


if __name__ == "__main__":
    main()
