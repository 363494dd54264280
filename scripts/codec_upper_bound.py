"""Codec upper bound: AP of decode(encode(GT)) with the real decoder and evaluator (no network, no pixels).

    python scripts/codec_upper_bound.py --ann ../shared/data/crowdpose_sample/test_crowdpose.json --input-size 512
    python scripts/codec_upper_bound.py --ann GT.json --codec dekr                 # DEKR's exact rules
    python scripts/codec_upper_bound.py --ann GT.json --set pose_nms=none offset_owner=smaller   # one rule at a time

Images are planned as evaluation resizes them: short side = input size, padded to multiples of 32. Prints the AP
table, the people lost by cause (no_center, center_collision, max_people, offsets_owned, pose_nms, low_oks: see
``bapose.evaluation.upper_bound``) and how often natural centers collide; the last line is ``AP=<value>``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from bapose.codecs import build_codec
from bapose.io import read_json_object
from bapose.evaluation.scoring import format_table, resolve_dataset
from bapose.evaluation.upper_bound import upper_bound
from bapose.errors import ConfigError, exit_on_error

CODEC_CONF = Path(__file__).resolve().parents[1] / "conf" / "codec"


def codec_kwargs(name_or_path: str, overrides: list[str]) -> dict:
    """Codec kwargs of ``conf/codec/<name>.yaml`` (or a yaml path), following its ``defaults`` list, then
    ``key=value`` overrides (values parsed as YAML)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CODEC_CONF / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"--codec '{name_or_path}': no file '{path}'; expected a name in {CODEC_CONF} or a yaml")
    raw = yaml.safe_load(path.read_text()) or {}
    kwargs: dict = {}
    for base in raw.pop("defaults", []) or []:
        if base != "_self_":
            kwargs.update(codec_kwargs(str(path.parent / f"{base}.yaml"), []))
    kwargs.update(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set '{item}'; expected key=value (a BAPoseCodec field)")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 1e9 as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        kwargs[key] = parsed
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ann", type=Path, required=True, help="COCO-format keypoint json")
    parser.add_argument("--dataset", choices=("auto", "coco", "crowdpose"), default="auto")
    parser.add_argument("--input-size", type=int, default=512)
    parser.add_argument("--codec", default="default", help="conf/codec preset name (default, dekr) or a yaml path")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="codec field overrides")
    parser.add_argument("--oks", type=float, default=0.95, help="a found person below this OKS counts as low_oks")
    parser.add_argument("--backend", choices=("pycocotools", "faster"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gt = read_json_object(args.ann)
    meta, mode = resolve_dataset(gt, args.dataset, args.ann)
    kwargs = codec_kwargs(args.codec, args.set)
    kwargs["input_size"] = args.input_size
    kwargs.setdefault("min_center_area", None)  # null: the rule set's small-person rule (COCO 32^2, CrowdPose none)
    codec = build_codec(kwargs, input_size=args.input_size, rule_set=mode, name=args.ann.name)
    result = upper_bound(args.ann, meta, mode, args.input_size, codec, backend=args.backend, oks_threshold=args.oks)
    print(f"codec upper bound, {mode} rules, input {args.input_size}, codec {args.codec} {' '.join(args.set)}: "
          f"{args.ann}")
    print(f"rules: offset_owner={codec.offset_owner} center_collision={codec.center_collision} "
          f"pose_nms={codec.nms_rule} min_center_area={codec.min_center_area:g}")
    print(format_table(result.stats))
    print(result.summary())
    print(f"AP={result.stats['AP']:.4f}")


if __name__ == "__main__":
    exit_on_error("codec_upper_bound", main)
