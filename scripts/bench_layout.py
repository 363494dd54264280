"""This tree against another checkout, side by side: encode, decode, the training sample and scoring.

    python scripts/bench_layout.py --baseline <checkout> [--rounds 3]     # writes benchmarks/layout.md
    git worktree add --detach ../base <commit> && BAPOSE_BENCH_BASELINE=../base make bench

A refactor that moves code between modules (issue 21's layers) must not slow the hot paths. Each measurement runs
in a fresh worker process that imports ``bapose`` from one checkout's ``src/`` (its ``conf/`` too), the trees
alternating round by round (A B, B A, ...); a third column runs the baseline against itself (A/A) in the same
rounds: the spread a tree shows against itself is the noise a ratio must be read against. Figures:

- encode: ``BAPoseCodec(512).encode`` of 20 people (~100 px, random places, seeded), 1 thread;
- decode: ``Predictor(net, codec)`` on one image's fixed outputs with 20 people (the forward is a lookup), 1 thread;
- training sample: ``CocoKeypointDataset.__getitem__`` at 512 on ``../shared/data/coco_sample``, as a worker runs it;
- scoring: ``KeypointEvaluator.compute()`` of 1,000 generated COCO images (pycocotools, the COCO default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("encode_ms", "decode_ms", "sample_ms", "score_s")
LABELS = {"encode_ms": "encode 20 people (ms)", "decode_ms": "decode 20 people (ms)",
          "sample_ms": "training sample at 512 (ms)", "score_s": "scoring 1,000 images (s)"}


def _median(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call (the tree under test's own timer)."""
    from bapose.utils.bench import timeit

    return timeit(fn, repeat=repeat, warmup=1)


def _people(n: int, size: int, rng) -> tuple:
    import numpy as np

    from bapose.data.metadata import DatasetMeta

    k = DatasetMeta.coco().num_keypoints
    centers = rng.uniform(60, size - 60, (n, 2))
    kp = np.concatenate([centers[:, None, :] + rng.uniform(-50, 50, (n, k, 2)), np.full((n, k, 1), 2.0)], -1)
    return kp, np.full(n, 100.0 * 100.0)


def _codec_figures(shared: Path) -> dict[str, float]:
    import numpy as np
    import torch

    from bapose.codecs import BAPoseCodec
    from bapose.data.metadata import DatasetMeta
    from bapose.predictor import Predictor

    sigmas = DatasetMeta.coco().sigmas
    codec = BAPoseCodec(input_size=512, oks_sigmas=sigmas)
    kp, areas = _people(20, 512, np.random.default_rng(0))
    encode = _median(lambda: codec.encode(kp, areas), 30)
    targets = codec.encode(kp, areas)
    heat, off = torch.from_numpy(targets["heatmaps"])[None], torch.from_numpy(targets["offsets"])[None]

    class Lookup(torch.nn.Module):
        num_keypoints, stride, size_divisor = 17, 4, 32

        def forward(self, images):
            return heat, off

    predictor = Predictor(Lookup(), codec)
    image = torch.zeros(1, 3, 512, 512)
    decode = _median(lambda: predictor(image), 30)
    return {"encode_ms": 1000 * encode, "decode_ms": 1000 * decode}


def _sample_figure(shared: Path) -> dict[str, float]:
    from bapose.codecs import BAPoseCodec
    from bapose.data.dataset import CocoKeypointDataset, configure_worker_process, limit_cv2_threads_before_fork

    limit_cv2_threads_before_fork(1)
    configure_worker_process(1)
    root = shared / "coco_sample"
    ds = CocoKeypointDataset(root / "test_coco.json", root, codec=BAPoseCodec(512), train=True, input_size=512)
    items = list(range(len(ds)))
    per_pass = _median(lambda: [ds[i] for i in items], 15)
    return {"sample_ms": 1000 * per_pass / len(items)}


def _score_figure(shared: Path) -> dict[str, float]:
    import numpy as np

    sys.path.insert(0, str(REPO / "scripts"))  # the generator of bench_evaluation.py (this tree's, for both)
    from bench_evaluation import make_ground_truth, make_predictions

    from bapose.data.metadata import DatasetMeta
    from bapose.evaluation import KeypointEvaluator

    meta = DatasetMeta.coco()
    rng = np.random.default_rng(0)
    gt = make_ground_truth(1000, meta, rng)
    ids, poses, scores = make_predictions(gt, meta, rng)
    evaluator = KeypointEvaluator(gt, meta, mode="coco", backend="pycocotools")
    evaluator.update(ids, poses, scores)
    return {"score_s": _median(evaluator.compute, 3)}


def worker(shared: Path) -> None:
    """One tree's figures (``bapose`` imported from this process's PYTHONPATH), as one json line."""
    import torch

    torch.set_num_threads(1)
    import bapose

    out = {"src": str(Path(bapose.__file__).parents[1])}
    for part in (_codec_figures, _sample_figure, _score_figure):
        out.update(part(shared))
    print(json.dumps(out))


def _run(tree: Path, shared: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", "--shared", str(shared)], env=env,
                          capture_output=True, text=True, timeout=1200, cwd=tree)
    if proc.returncode:
        raise SystemExit(f"bench_layout: the worker for {tree} failed:\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(got["src"]).resolve() != (tree / "src").resolve():
        raise SystemExit(f"bench_layout: the worker for {tree} imported bapose from {got['src']}")
    return got


def markdown(runs: dict[str, list[dict]], baseline: Path, rounds: int, machine: str) -> str:
    med = {name: {f: statistics.median(r[f] for r in rs) for f in FIGURES} for name, rs in runs.items()}
    spread = {name: {f: (min(r[f] for r in rs), max(r[f] for r in rs)) for f in FIGURES} for name, rs in runs.items()}
    lines = [
        "## Layout refactor: this tree against the branch point (encode, decode, training sample, scoring)",
        "",
        f"`python scripts/bench_layout.py --baseline {baseline} --rounds {rounds}`: each figure measured in fresh "
        "worker processes, one per tree and round, the trees alternating; medians over the rounds, and the lowest - "
        "highest round. `A/A` runs the baseline against itself in the same rounds: its ratio and the rounds' spread "
        f"are the noise of this comparison. 1 thread. Machine: {machine}.",
        "",
        "| figure | baseline | baseline again (A/A) | this tree | A/A ratio | this tree / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for f in FIGURES:
        cells = [f"{med[n][f]:.3g} ({spread[n][f][0]:.3g} - {spread[n][f][1]:.3g})"
                 for n in ("baseline", "baseline_again", "tree")]
        a, aa, b = med["baseline"][f], med["baseline_again"][f], med["tree"][f]
        lines.append(f"| {LABELS[f]} | {' | '.join(cells)} | {aa / a:.2f} | {b / a:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout (its src/ and conf/)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("BAPOSE_SHARED", REPO.parent / "shared"))
                        / "data")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.shared)
    baseline = args.baseline or (Path(os.environ["BAPOSE_BENCH_BASELINE"]) if os.environ.get("BAPOSE_BENCH_BASELINE")
                                 else None)
    if baseline is None:  # make bench without a baseline: the section keeps its last side-by-side run
        print("bench_layout: no --baseline (or BAPOSE_BENCH_BASELINE) given: benchmarks/layout.md left as it is")
        return None
    args.baseline = baseline
    trees = {"baseline": args.baseline.resolve(), "tree": REPO, "baseline_again": args.baseline.resolve()}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(_run(trees[name], args.shared))
            print(f"round {r + 1} {name}: " + ", ".join(f"{f} {runs[name][-1][f]:.4g}" for f in FIGURES), flush=True)
    from bapose.utils.bench import machine, write_section

    md = markdown(runs, args.baseline, args.rounds, machine())
    print(md)
    write_section("layout", md)


if __name__ == "__main__":
    main()
