"""The generated crowd dataset: COCO validity, labels that match the pixels, determinism, atomic caching, CLI, and
the codec upper bound on it."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from bapose.cli import synth as synth_cli
from bapose.data import synthetic
from bapose.data.metadata import DatasetMeta
from bapose.data.synthetic import MARKER, SynthSpec, dataset_stats, ensure_dataset, generate, render_scene
from bapose.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_train=12, num_val=8, image_size=128, seed=3)


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ensure_dataset(tmp_path_factory.mktemp("synth") / "coco", **SMALL)


def _load(path: Path) -> COCO:
    return COCO(str(path))


def test_json_is_valid_coco_keypoints(coco_set: dict[str, Path]) -> None:
    meta = DatasetMeta.coco()
    for split in ("train", "val"):
        coco = _load(coco_set[f"{split}_ann"])
        data = coco.dataset
        assert len(data["images"]) == SMALL[f"num_{split}"]
        assert len({i["id"] for i in data["images"]}) == len(data["images"])
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        cat = data["categories"][0]
        assert cat["id"] == 1 and cat["keypoints"] == list(meta.keypoints)
        assert cat["skeleton"] == [[a + 1, b + 1] for a, b in meta.skeleton]
        sizes = {i["id"]: (i["height"], i["width"]) for i in data["images"]}
        for ann in data["annotations"]:
            assert ann["category_id"] == 1
            kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            assert kps.shape == (meta.num_keypoints, 3)
            assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert set(np.unique(kps[:, 2])) <= {0, 1, 2}
            # COCO: unlabelled joints are (0, 0, 0); labelled ones lie inside the image
            assert np.all(kps[kps[:, 2] == 0, :2] == 0)
            h, w = sizes[ann["image_id"]]
            lab = kps[kps[:, 2] > 0]
            assert np.all((lab[:, 0] >= 0) & (lab[:, 0] <= w - 1) & (lab[:, 1] >= 0) & (lab[:, 1] <= h - 1))
            # area is the rendered mask; pycocotools rasterises the polygons/RLE back to (nearly) the same mask
            mask = coco.annToMask(ann)
            assert mask.shape == (h, w)
            assert abs(int(mask.sum()) - ann["area"]) <= max(0.03 * ann["area"], 3), ann["id"]
            x, y, bw, bh = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x - 1 and xs.max() <= x + bw and ys.min() >= y - 1 and ys.max() <= y + bh
            if ann["iscrowd"]:
                assert ann["num_keypoints"] == 0 and isinstance(ann["segmentation"], dict)


def test_images_decode_at_the_json_size(coco_set: dict[str, Path]) -> None:
    data = json.loads(coco_set["val_ann"].read_text())
    for info in data["images"]:
        img = cv2.imread(str(coco_set["val_images"] / info["file_name"]), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (info["height"], info["width"], 3)
        assert max(img.shape[:2]) == SMALL["image_size"]
        assert img.std() > 10  # a textured scene, not a blank canvas


def test_crowd_statistics() -> None:
    """Several people per image within the requested range, some occluded and some cut-off joints."""
    spec = SynthSpec(image_size=128, people=(2, 5), crowd_prob=0.5)
    counts, vis = [], []
    for i in range(30):
        _, people = render_scene(spec, np.random.default_rng(i))
        labelled = [p for p in people if p["keypoints"][:, 2].any()]
        counts.append(len(labelled))
        vis += [p["keypoints"][:, 2] for p in labelled]
    v = np.concatenate(vis)
    assert min(counts) >= 1 and max(counts) <= 5 and np.mean(counts) >= 2.8
    assert 0.02 < (v == 1).mean() < 0.3, "occluded (v=1) joint fraction"
    assert 0.005 < (v == 0).mean() < 0.3, "out-of-frame (v=0) joint fraction"


def test_visibility_labels_match_the_pixels() -> None:
    """v=2 joints sit on their own visible body; v=1 joints are hidden under a nearer person."""
    spec = SynthSpec(image_size=160, people=(4, 6))
    checked = {1: 0, 2: 0}
    for i in range(12):
        _, people = render_scene(spec, np.random.default_rng(100 + i))
        union = np.logical_or.reduce([p["mask"] for p in people])
        for p in people:
            kps = p["keypoints"]
            for x, y, v in kps[kps[:, 2] > 0]:
                px = (int(round(y)), int(round(x)))
                if v == 2:
                    assert p["mask"][px], f"visible joint at {px} not on its person's visible mask"
                else:
                    assert not p["mask"][px] and union[px], f"occluded joint at {px} is not covered by someone"
                checked[int(v)] += 1
    assert checked[1] > 10 and checked[2] > 200


def test_left_is_image_right_and_side_colours_are_random() -> None:
    """Front-facing people: a person's left shoulder is on the image's right. The colour family of the left arm is a
    coin flip, so a horizontal flip with left/right swapped yields the same distribution (flip augmentation is
    consistent)."""
    spec = SynthSpec(image_size=192, people=(1, 1), background_people=(0, 0), crowd_prob=0.0)
    meta = spec.meta
    ls, rs, lw = (meta.keypoints.index(n) for n in ("left_shoulder", "right_shoulder", "left_wrist"))
    warm_left, right_of = [], []
    for i in range(40):
        img, people = render_scene(spec, np.random.default_rng(i))
        kps = people[-1]["keypoints"]
        if kps[ls, 2] == 2 and kps[rs, 2] == 2:
            right_of.append(kps[ls, 0] > kps[rs, 0])
        # sample the left upper arm halfway between shoulder and elbow... via the shoulder-wrist chain colour
        if kps[ls, 2] == 2 and kps[lw, 2] == 2:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            x, y = np.round(kps[ls, :2]).astype(int)
            warm_left.append(hsv[y, x, 0] < 45 or hsv[y, x, 0] >= 135)
    assert np.mean(right_of) > 0.95
    assert 0.2 < np.mean(warm_left) < 0.8


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    params = dict(num_train=4, num_val=3, image_size=96)
    a = generate(tmp_path / "a", seed=7, **params)
    b = generate(tmp_path / "b", seed=7, workers=2, **params)  # process count must not change the bytes
    c = generate(tmp_path / "c", seed=8, **params)
    for key in ("train_ann", "val_ann"):
        assert a[key].read_bytes() == b[key].read_bytes()
        assert a[key].read_bytes() != c[key].read_bytes()
    jpgs = sorted(p.name for p in a["train_images"].iterdir())
    assert len(jpgs) == 4
    assert all((a["train_images"] / n).read_bytes() == (b["train_images"] / n).read_bytes() for n in jpgs)
    # the train split does not depend on how many val images were asked for
    d = generate(tmp_path / "d", seed=7, num_train=4, num_val=1, image_size=96)
    train_anns = [json.loads(x["train_ann"].read_text())["annotations"] for x in (a, d)]
    assert train_anns[0] == train_anns[1]


def test_crowdpose_variant_has_14_joints_and_crowd_index(tmp_path: Path) -> None:
    paths = ensure_dataset(tmp_path / "cp", num_train=0, num_val=8, image_size=128, seed=1, keypoint_set="crowdpose")
    data = json.loads(paths["val_ann"].read_text())
    meta = DatasetMeta.crowdpose()
    assert data["categories"][0]["keypoints"] == list(meta.keypoints)
    assert all(len(a["keypoints"]) == 3 * 14 for a in data["annotations"])
    ci = np.array([img["crowdIndex"] for img in data["images"]])
    assert np.all(ci >= 0) and ci.max() > 0
    # head top above the neck above the shoulders for upright people
    kps = np.array([a["keypoints"] for a in data["annotations"] if a["num_keypoints"] == 14]).reshape(-1, 14, 3)
    assert np.mean(kps[:, 12, 1] < kps[:, 13, 1]) > 0.9


def test_ensure_dataset_caches_by_hash_and_reuses(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ensure_dataset(None, **SMALL)
    root = paths["train_ann"].parent.parent
    assert root.parent.name == "synthetic" and root.name == SynthSpec(**SMALL).key()
    assert json.loads((root / MARKER).read_text())["params"] == SynthSpec(**SMALL).to_dict()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an existing dataset must not be regenerated")

    monkeypatch.setattr(synthetic, "generate", boom)
    assert ensure_dataset(None, **SMALL) == paths
    # Hydra-style lists hash the same as tuples
    assert ensure_dataset(None, **SMALL, people=[1, 6]) == paths
    # another parameter is another folder
    assert SynthSpec(**{**SMALL, "seed": 4}).key() != root.name


def test_ensure_dataset_refuses_foreign_or_mismatched_folders(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "something.txt").write_text("not ours")
    with pytest.raises(DataError, match="no valid 'SYNTH_COMPLETE.json'"):
        ensure_dataset(foreign, **SMALL)
    root = tmp_path / "pinned"
    ensure_dataset(root, num_train=2, num_val=1, image_size=96, seed=0)
    with pytest.raises(DataError, match="seed"):
        ensure_dataset(root, num_train=2, num_val=1, image_size=96, seed=1)
    with pytest.raises(ConfigError, match="unknown option"):
        ensure_dataset(None, num_train=2, num_val=1, image_size=96, seed=0, colour="red")
    with pytest.raises(ConfigError, match="people"):
        SynthSpec(people=(5, 2))
    with pytest.raises(DataError, match="unknown dataset preset"):
        SynthSpec(keypoint_set="mpii")


def test_crash_leaves_no_half_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic.generate

    def crash(out_dir: Path, *args: object, **kwargs: object) -> None:
        real(out_dir, *args, **kwargs)
        raise KeyboardInterrupt  # killed after writing everything but the marker

    monkeypatch.setattr(synthetic, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_dataset(tmp_path / "ds", num_train=2, num_val=1, image_size=96, seed=0)
    assert not (tmp_path / "ds").exists()
    assert not list(tmp_path.glob(".ds.tmp-*"))
    monkeypatch.setattr(synthetic, "generate", real)
    paths = ensure_dataset(tmp_path / "ds", num_train=2, num_val=1, image_size=96, seed=0)
    assert paths["val_ann"].exists()


def test_rename_wins_without_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no lock exists (Windows), a process that loses the race discards its copy and uses the winner's."""
    import contextlib

    monkeypatch.setattr(synthetic, "_exclusive", lambda path: contextlib.nullcontext(False))
    real = synthetic.generate
    root = tmp_path / "race"
    params = dict(num_train=2, num_val=1, image_size=96, seed=0)
    calls = []

    def racing(out_dir: Path, *args: object, **kwargs: object) -> None:
        real(out_dir, *args, **kwargs)
        if not calls:  # while we render, a "second process" finishes the same dataset first
            calls.append(out_dir)
            ensure_dataset(root, **params)

    monkeypatch.setattr(synthetic, "generate", racing)
    paths = ensure_dataset(root, **params)
    assert paths["train_ann"].exists() and (root / MARKER).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["race"]


def _worker(root: str, queue: mp.Queue) -> None:
    paths = ensure_dataset(Path(root), num_train=6, num_val=2, image_size=96, seed=5)
    queue.put(str(paths["train_ann"]))


def test_concurrent_processes_share_one_dataset(tmp_path: Path) -> None:
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path / "shared"), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = {queue.get(timeout=5) for _ in procs}
    assert len(results) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["shared"]
    assert len(json.loads(Path(results.pop()).read_text())["images"]) == 6


def test_cli_writes_and_summarises(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, sheet = tmp_path / "cli", tmp_path / "sheet.png"
    rc = synth_cli.main(["--out", str(out), "--num-train", "3", "--num-val", "4", "--image-size", "96",
                         "--seed", "0", "--keypoints", "coco", "--sheet", str(sheet)])
    text = capsys.readouterr().out
    assert rc == 0 and str(out) in text
    stats = dataset_stats(out / "annotations" / "val.json")
    assert f"{stats['images']} images, {stats['people']} people" in text
    assert re.search(r"val: 4 images, \d+ people, \d\.\d\d people/image", text)
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] >= 384
    rc = synth_cli.main(["--out", str(out), "--num-train", "3", "--num-val", "4", "--image-size", "96",
                         "--seed", "1"])
    assert rc == 2 and "seed" in capsys.readouterr().err


def test_codec_upper_bound_on_generated_data(tmp_path: Path) -> None:
    """A perfect network with our codec scores AP >= 0.99 on the generated data (input 512)."""
    script = REPO / "scripts" / "codec_upper_bound.py"
    if not script.exists():
        pytest.skip(f"'{script}' is not in this checkout")
    paths = ensure_dataset(tmp_path / "ub", num_train=0, num_val=24, image_size=256, seed=11)
    # the 256 px images hold people below COCO's 32^2 in their own pixels, whom the COCO small-person rule leaves
    # without a center on purpose (on the original area, as DEKR: issue 19); this bound is about the rest
    res = subprocess.run([sys.executable, str(script), "--ann", str(paths["val_ann"]), "--input-size", "512",
                          "--set", "min_center_area=0"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ap = float(res.stdout.strip().splitlines()[-1].split("=")[1])
    assert ap >= 0.99


# dense crowds: 10-16 people, stacked one behind another so centers share grid pixels (bapose-synth options)
DENSE = dict(num_train=0, num_val=6, image_size=256, seed=2, people=(10, 16), min_center_gap=0.0, stack_prob=0.5,
             min_visible=0.15, min_area=600.0, height_range=(0.3, 0.7))


def test_options_added_later_keep_the_cache_key_of_earlier_datasets() -> None:
    # keys of the default and of the demo's dataset before stack_prob / stack_spread / min_area existed
    assert SynthSpec().key() == "7ea2d6740b04"
    assert SynthSpec(num_train=1024, num_val=64, image_size=128, people=(1, 3), height_range=(0.5, 0.9)).key() \
        == "77352e89669f"
    assert "stack_prob" not in SynthSpec().to_dict() and SynthSpec(stack_prob=0.5).to_dict()["stack_prob"] == 0.5
    with pytest.raises(ConfigError, match="stack_prob"):
        SynthSpec(stack_prob=1.5)


@pytest.fixture(scope="module")
def dense_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return ensure_dataset(tmp_path_factory.mktemp("synth") / "dense", **DENSE)


def test_dense_crowds_collide_and_the_default_codec_loses_nobody(dense_set: dict[str, Path]) -> None:
    """The codec bound on generated dense crowds at 512: the default rules find everyone (AP 1), DEKR's lose people
    to each crowd cause; centers collide often (the point of the set)."""
    from bapose.codecs import BAPoseCodec
    from bapose.evaluation.upper_bound import upper_bound

    paths = dense_set
    stats = dataset_stats(paths["val_ann"])
    assert stats["people_per_image"] >= 10
    data = json.loads(paths["val_ann"].read_text())
    meta = DatasetMeta.coco()
    # min_center_area 0: the 256 px images hold people below COCO's 32^2 in their own pixels (see above)
    ours = upper_bound(data, meta, "coco", 512, BAPoseCodec(input_size=512, min_center_area=0))
    assert ours.stats["AP"] >= 0.999 and sum(ours.lost.values()) == 0 and ours.people == stats["people"]
    placed = sum(ours.centers.values())
    assert placed - ours.centers["ok"] >= 0.1 * placed  # >= 10 % of the natural centers collide
    dekr = upper_bound(data, meta, "coco", 512, BAPoseCodec(input_size=512, min_center_area=0, offset_owner="smaller",
                                                           center_collision="ignore", pose_nms="dekr",
                                                           heatmap_window="dekr"))
    assert dekr.lost["center_collision"] > 0 and dekr.lost["offsets_owned"] > 0 and dekr.stats["AP"] < 0.95


def test_cli_writes_dense_crowds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = synth_cli.main(["--out", str(tmp_path / "d"), "--num-train", "0", "--num-val", "2", "--image-size", "128",
                         "--people", "10", "12", "--min-center-gap", "0", "--stack-prob", "0.5", "--min-visible",
                         "0.15", "--height-range", "0.3", "0.7"])
    assert rc == 0
    params = json.loads((tmp_path / "d" / MARKER).read_text())["params"]
    assert params["stack_prob"] == 0.5 and params["min_center_gap"] == 0.0 and params["height_range"] == [0.3, 0.7]
    assert "val: 2 images" in capsys.readouterr().out


def test_show_targets_draws_ownership_of_a_dense_crowd(dense_set: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    out = tmp_path / "own.png"
    monkeypatch.setattr(sys, "argv", ["show_targets.py", "--ownership", "--ann", str(dense_set["val_ann"]), "--images",
                                      str(dense_set["val_images"]), "--input-size", "256", "--n", "2", "--out",
                                      str(out)])
    runpy.run_path(str(REPO / "scripts" / "show_targets.py"), run_name="__main__")
    img = cv2.imread(str(out))
    # 2 rows (images) x 3 panels (ground truth, DEKR's rules, ours) of a 40-cell crop at x3: 480 px each
    assert img.shape == (2 * 480, 3 * 480, 3)
    assert np.abs(img[:, 480:960].astype(int) - img[:, 960:].astype(int)).mean() > 1  # the rules differ
