"""Codec speed: encode and decode per image at 512 (grid 128) for 1 / 5 / 20 people and a tight crowd, one thread.

    python scripts/bench_codec.py                          # writes benchmarks/codec.md
    python scripts/bench_codec.py --baseline /tmp/base     # also against another checkout (e.g. a branch point)

DESIGN.md §7 targets: encode 20 people <= 5 ms, decode <= 5 ms per image (DEKR's own: 108.7 ms / 39 ms). The default
crowd rules (nearest-center offset ownership, collision-free centers, OKS pose NMS) are timed against DEKR's rules
(``codec=dekr``: the keys of that checkout's ``conf/codec/dekr.yaml``) call by call, so the ratio holds even when other
jobs share the machine. With ``--baseline`` each checkout is measured in its own process (one bapose per process),
the two alternating for ``--rounds`` rounds; each figure is the median over the rounds of the per-round medians.
The decode of the very same maps is also timed with both trees imported into one process and called in turn, call by
call (with the baseline against itself for the noise of that comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml

CASES = (("1", 1, None), ("5", 5, None), ("20", 20, None), ("20, tight crowd", 20, 96.0))
SIZE, K = 512, 17
REPO = Path(__file__).resolve().parents[1]


def people(n: int, size: int, k: int, rng: np.random.Generator, spread: float | None = None) -> np.ndarray:
    """``n`` people of ~100 px at random positions (centres within ``spread`` px of the middle when given), all
    joints labelled: ``(n, k, 3)``."""
    if spread is None:
        centres = rng.uniform(60, size - 60, (n, 1, 2))
    else:
        centres = size / 2 + rng.uniform(-spread / 2, spread / 2, (n, 1, 2))
    xy = centres + rng.normal(0, 35, (n, k, 2))
    return np.concatenate([xy, np.full((n, k, 1), 2.0)], -1)


def dekr_rules(root: Path) -> dict:
    """``codec=dekr`` of a checkout: the fields its ``conf/codec/dekr.yaml`` sets over ``default.yaml``."""
    raw = yaml.safe_load((root / "conf" / "codec" / "dekr.yaml").read_text()) or {}
    raw.pop("defaults", None)
    return raw


def interleaved(fns: list, repeat: int = 30, warmup: int = 3) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (so load from other jobs hits all of them alike)."""
    import time

    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def _decoders() -> tuple[Any, Any]:
    """``decode(codec, heatmaps, offsets)`` and ``decode_multiscale(codec, outputs, scales, base_hw)`` of the
    ``bapose`` imported now: the predictor's, or (checkouts before ``bapose.predictor``) the codec's own methods."""
    try:
        from bapose.predictor import decode, decode_multiscale
    except ImportError:
        def decode(codec, heatmaps, offsets):  # noqa: ANN001, ANN202
            return codec.decode(heatmaps, offsets)

        def decode_multiscale(codec, outputs, scales, base_hw):  # noqa: ANN001, ANN202
            return codec.decode_multiscale(outputs, scales, base_hw)
    return decode, decode_multiscale


def measure(root: Path) -> dict[str, dict]:
    """Per case: encode / decode seconds under the default and DEKR's rules, centers moved, people decoded."""
    from bapose.codecs import BAPoseCodec
    from bapose.data.metadata import DatasetMeta

    decode, _ = _decoders()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # the mask downsample; dataloader workers run one thread each too
    sigmas = DatasetMeta.coco().sigmas
    ours = BAPoseCodec(input_size=SIZE, oks_sigmas=sigmas)
    dekr = BAPoseCodec(input_size=SIZE, oks_sigmas=sigmas, **dekr_rules(root))
    rng = np.random.default_rng(0)
    mask = np.zeros((SIZE, SIZE), bool)
    mask[:64, :64] = True
    out = {}
    for label, n, spread in CASES:
        kp, areas = people(n, SIZE, K, rng, spread), np.full(n, 100.0**2)
        enc, enc_dekr = interleaved([lambda: ours.encode(kp, areas, mask), lambda: dekr.encode(kp, areas, mask)])
        found, decs = [], []
        for codec in (ours, dekr):
            t = codec.encode(kp, areas, mask)
            hm, off = torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]
            decs.append(lambda codec=codec, hm=hm, off=off: decode(codec, hm, off))
            found.append(len(decode(codec, hm, off)[0].scores))
        dec, dec_dekr = interleaved(decs)
        moved = int((ours.layout(kp, areas, (SIZE // 4, SIZE // 4)).status != 0).sum())
        out[label] = {"enc": enc, "enc_dekr": enc_dekr, "dec": dec, "dec_dekr": dec_dekr, "moved": moved,
                      "found": found}
    return out


# decode cases of --baseline: (label, decode knobs beyond the input size and sigmas, people, spread, scales)
DECODE_CASES = (("1", {}, 1, None, (1,)), ("5", {}, 5, None, (1,)), ("20", {}, 20, None, (1,)),
                ("20, tight crowd", {}, 20, 96.0, (1,)), ("20, DEKR's pose NMS", {"pose_nms": "dekr"}, 20, None, (1,)),
                ("20, refine_radius 2", {"refine_radius": 2}, 20, None, (1,)),
                ("20, scales (1, 2)", {}, 20, None, (1, 2)))


def _load_tree(src: str) -> dict[str, Any]:
    """``BAPoseCodec``, ``decode`` and ``decode_multiscale`` of the ``bapose`` under ``src``, imported beside this
    process's own (its modules are taken out of ``sys.modules`` again; its functions keep their own globals)."""
    mine = {name: mod for name, mod in sys.modules.items() if name == "bapose" or name.startswith("bapose.")}
    for name in mine:
        del sys.modules[name]
    sys.path.insert(0, src)
    try:
        import bapose.codecs as codecs

        dec, dec_ms = _decoders()
        tree = {"codec": codecs.BAPoseCodec, "decode": dec, "decode_multiscale": dec_ms,
                "file": codecs.__file__}
    finally:
        sys.path.remove(src)
        for name in [n for n in sys.modules if n == "bapose" or n.startswith("bapose.")]:
            del sys.modules[name]
        sys.modules.update(mine)
    return tree


def compare_decode(baseline: str, size: int, k: int, repeat: int = 300) -> list[str]:
    """Rows of the decode table: this tree's decode against ``baseline``'s (a ``src`` folder) on the same maps,
    call by call in this process."""
    from bapose.codecs import BAPoseCodec
    from bapose.data.metadata import DatasetMeta

    decode, decode_multiscale = _decoders()
    trees = [{"codec": BAPoseCodec, "decode": decode, "decode_multiscale": decode_multiscale},
             _load_tree(str(Path(baseline).resolve()))]
    print(f"baseline: {trees[1]['file']}")
    sigmas = DatasetMeta.coco().sigmas
    rng = np.random.default_rng(1)
    rows = []
    for label, kw, n, spread, scales in DECODE_CASES:
        kp = people(n, size, k, rng, spread)
        maps = []
        for s in scales:  # perfect maps; scale s: the people at s x the size
            at = kp.copy()
            at[..., :2] = (at[..., :2] + 0.5) * s - 0.5
            t = BAPoseCodec(input_size=size, oks_sigmas=sigmas, **kw).encode(
                at, np.full(n, 100.0**2 * s * s), image_size=(size * s, size * s))
            maps.append((torch.from_numpy(t["heatmaps"])[None], torch.from_numpy(t["offsets"])[None]))
        fns = []
        for tree in trees:
            codec = tree["codec"](input_size=size, oks_sigmas=sigmas, **kw)
            if len(scales) == 1:
                fns.append(lambda tree=tree, codec=codec: tree["decode"](codec, *maps[0]))
            else:
                fns.append(lambda tree=tree, codec=codec: tree["decode_multiscale"](
                    codec, maps, [(float(s), float(s)) for s in scales], (size, size)))
        this, base = interleaved(fns, repeat=repeat, warmup=10)
        found = [len(fn()[0].scores) for fn in fns]
        rows.append(f"| {label} | {this * 1e3:.2f} | {base * 1e3:.2f} | {this / base:.2f} | {found[0]} / {found[1]} |")
        print(rows[-1])
        if label == "20":  # the noise of this comparison: the baseline against itself, the same way
            again, base = interleaved([fns[1], fns[1]], repeat=repeat, warmup=10)
            rows.append(f"| 20, baseline against itself | {again * 1e3:.2f} | {base * 1e3:.2f} | {again / base:.2f} "
                        f"| {found[1]} / {found[1]} |")
            print(rows[-1])
    return rows


def _worker(root: Path) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--worker", str(root)], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], label: str, key: str) -> float:
    return float(np.median([r[label][key] for r in runs]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="another checkout (its src/ and conf/) to time side by side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return
    from bapose.utils.bench import machine, write_section

    torch.set_num_threads(1)  # as the measurements (and machine() reports it)
    load = os.getloadavg()[0]
    if args.baseline:
        runs: dict[str, list] = {"now": [], "base": []}
        for _ in range(args.rounds):
            runs["base"].append(_worker(args.baseline.resolve()))
            runs["now"].append(_worker(REPO))
        now, base = runs["now"], runs["base"]
    else:
        now, base = [measure(REPO)], None
    load = max(load, os.getloadavg()[0])
    rows = []
    for label, _, _ in CASES:
        m = {k: _median(now, label, k) * 1e3 for k in ("enc", "enc_dekr", "dec", "dec_dekr")}
        found = now[0][label]["found"]
        row = (f"| {label} | {m['enc']:.2f} | {m['enc_dekr']:.2f} | {m['enc'] / m['enc_dekr']:.2f} | {m['dec']:.2f} | "
               f"{m['dec_dekr']:.2f} | {now[0][label]['moved']} | {found[0]} / {found[1]} |")
        if base is not None:
            b = {k: _median(base, label, k) * 1e3 for k in ("enc", "enc_dekr")}
            row += (f" {b['enc']:.2f} | {m['enc'] / b['enc']:.2f} | {b['enc_dekr']:.2f} | "
                    f"{m['enc_dekr'] / b['enc_dekr']:.2f} |")
        rows.append(row)
        print(row)
    head = ("| people | encode ms | encode ms, DEKR rules | ratio | decode ms | decode ms, DEKR rules | centers moved "
            "| people decoded (ours / DEKR rules) |")
    rule = "|---|---|---|---|---|---|---|---|"
    how = (f"`scripts/bench_codec.py`, input {SIZE}x{SIZE} (grid {SIZE // 4}), K={K}, 1 thread, median of 30; the "
           "default rules and DEKR's (`codec=dekr`) timed call by call. People ~100 px at random places; the tight "
           f"crowd has all 20 centres within 96 px. Machine: {machine()}; load average {load:.1f} while it ran.")
    if base is not None:
        head += " branch point: encode ms | now / then | branch point: encode ms, DEKR rules | now / then |"
        rule += "---|---|---|---|"
        commit = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "?"
        how += (f" Side by side with the checkout of commit {commit} (`python scripts/bench_codec.py --baseline "
                f"<checkout> --rounds {args.rounds}`): each checkout in its own process, alternating, {args.rounds} "
                "rounds, medians over the rounds; DEKR's rules are each checkout's own `codec=dekr`.")
    lines = ["## Codec (targets and decoding)", "", how,
             "DESIGN §7 targets: encode 20 people <= 5 ms, decode <= 5 ms (DEKR: 108.7 ms / 39 ms).", "",
             head, rule, *rows]
    if base is not None:
        compared = compare_decode(str(args.baseline.resolve() / "src"), SIZE, K)
        lines += ["", f"Decode, this tree against the checkout of commit {commit}: the same maps (perfect targets of "
                  "20 people unless named, default rules unless named), both trees imported in one process and "
                  "called in turn, median of 300 calls each; ratio = this / baseline.",
                  "", "| case | decode ms | decode ms, baseline | ratio | people (this / baseline) |",
                  "|---|---|---|---|---|", *compared]
    md = "\n".join(lines)
    print(f"wrote {write_section('codec', md)}")


if __name__ == "__main__":
    main()
