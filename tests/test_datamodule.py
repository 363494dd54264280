"""BAPoseDataModule built from the real Hydra config (shrunk): batches of the shapes model and loss expect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from bapose.codecs import BAPoseCodec
from bapose.data.datamodule import BAPoseDataModule, worker_init_fn
from bapose.errors import ConfigError
from bapose.paths import config_dir

SIZE = 128


def _data_cfg(name: str, overrides: list[str] = ()):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=f"data/{name}", overrides=list(overrides)).data


def _coco_dm(coco_sample: Path, **kw) -> BAPoseDataModule:
    """conf/data/coco.yaml pointed at the 4-image sample, at a small input size."""
    split = {"ann_file": "test_coco.json", "image_dir": "."}
    cfg = _data_cfg("coco", [f"data.root={coco_sample}", f"data.input_size={SIZE}", "data.num_workers=0",
                             "data.batch_size=2", "data.val_batch_size=4", "data.pin_memory=false"])
    return hydra.utils.instantiate(cfg, train=split, val=split, **kw)


def test_config_builds_datamodule_and_training_batches(coco_sample: Path) -> None:
    dm = _coco_dm(coco_sample)
    assert dm.meta.num_keypoints == 17 and dm.val_ann_file == coco_sample / "test_coco.json"
    assert dm.test_ann_file == dm.val_ann_file  # no test split configured: test scores val
    assert isinstance(dm.codec, BAPoseCodec) and dm.codec.input_size == SIZE and dm.eval_mode == "coco"
    dm.setup("fit")
    torch.manual_seed(0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 4 images, batch 2, full batches only
    b = batches[0]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (2, 3, SIZE, SIZE)
    assert b["heatmaps"].shape == b["heatmap_weights"].shape == (2, 18, SIZE // 4, SIZE // 4)
    assert b["offsets"].shape == (2, 34, SIZE // 4, SIZE // 4)
    assert b["offset_weights"].shape[0] == 2 and b["offset_weights"].shape[2:] == (SIZE // 4, SIZE // 4)
    ids = torch.cat([x["image_id"] for x in batches]).tolist()
    assert sorted(ids) == [785, 40083, 196141, 197388]
    assert float(b["heatmaps"].max()) > 0.9  # people were encoded


def test_validation_batches_are_padded_to_the_batch_max(coco_sample: Path) -> None:
    dm = _coco_dm(coco_sample)
    dm.setup("validate")
    (b,) = list(dm.val_dataloader())
    assert b["image"].shape[0] == 4 and b["image"].shape[2] % 32 == 0 and b["image"].shape[3] % 32 == 0
    assert b["input_to_orig"].shape == (4, 2, 3)
    assert b["orig_size"].shape == (4, 2) and b["valid_size"].shape == (4, 2)
    assert b["image"].shape[2] == int(b["valid_size"][:, 0].max().item() + 31) // 32 * 32
    assert b["image"].shape[3] == int(b["valid_size"][:, 1].max().item() + 31) // 32 * 32
    for i in range(4):  # the padding is black and the content is not
        h, w = b["valid_size"][i].tolist()
        assert b["image"][i, :, h:].sum() == 0 and b["image"][i, :, :, w:].sum() == 0
        assert b["image"][i, :, :h, :w].float().mean() > 10
    # input_to_orig maps the valid area's far corner onto the original image's
    for i in range(4):
        h, w = b["valid_size"][i].tolist()
        corner = b["input_to_orig"][i] @ torch.tensor([w - 0.5, h - 0.5, 1.0])
        oh, ow = b["orig_size"][i].tolist()
        assert torch.allclose(corner, torch.tensor([ow - 0.5, oh - 0.5]), atol=1e-3)


def test_worker_processes_encode_targets(coco_sample: Path) -> None:
    """num_workers=1: targets are encoded in the worker and reach the main process intact."""
    dm = _coco_dm(coco_sample, num_workers=1, persistent_workers=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and not loader.persistent_workers and loader.worker_init_fn.func is worker_init_fn
    torch.manual_seed(0)
    b = next(iter(loader))
    assert b["heatmaps"].shape == (2, 18, SIZE // 4, SIZE // 4) and b["heatmap_weights"].min() >= 0


def test_each_ddp_rank_draws_its_own_augmentations(coco_sample: Path) -> None:
    """The workers of rank 0 and rank 1 start from the same base seed (seed_everything on every rank) yet draw
    different augmentations (Lightning's rank-aware worker seeding); the same rank draws the same ones again."""
    from types import SimpleNamespace

    import lightning as L

    def first_batch(rank: int) -> torch.Tensor:
        dm = _coco_dm(coco_sample, num_workers=1, persistent_workers=False)
        dm.trainer = SimpleNamespace(global_rank=rank)  # what Lightning attaches; only the rank is read
        dm.setup("fit")
        L.seed_everything(0, workers=True)
        return next(iter(dm.train_dataloader()))

    r0, r0_again, r1 = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(r0["image_id"], r1["image_id"])  # the same source images (no DistributedSampler here) ...
    assert not torch.equal(r0["image"], r1["image"])  # ... augmented differently on the two ranks
    assert torch.equal(r0["image"], r0_again["image"])  # reproducible per rank


def test_crowdpose_config_and_meta_from_json(crowdpose_sample: Path) -> None:
    split = {"ann_file": "test_crowdpose.json", "image_dir": "."}
    cfg = _data_cfg("crowdpose", [f"data.root={crowdpose_sample}", f"data.input_size={SIZE}", "data.num_workers=0",
                                  "data.batch_size=2", "data.pin_memory=false"])
    dm = hydra.utils.instantiate(cfg, train=split, val=split, test=split)
    assert dm.meta.name == "crowdpose" and dm.eval_mode == "crowdpose"
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["heatmaps"].shape == (2, 15, SIZE // 4, SIZE // 4) and b["offsets"].shape[1] == 28
    # meta: null reads the joint set from the json's category
    auto = BAPoseDataModule(input_size=SIZE, num_keypoints=14, meta=None, train=split, val=split,
                            root=crowdpose_sample, num_workers=0)
    assert auto.meta.name == "crowdpose" and auto.meta.flip_index[0] == 1


def test_num_keypoints_mismatch_names_both() -> None:
    with pytest.raises(ConfigError, match=r"'num_keypoints' is 17 .* 'crowdpose' has K=14"):
        BAPoseDataModule(num_keypoints=17, meta={"name": "crowdpose"})
    with pytest.raises(ConfigError, match="input_size"):
        BAPoseDataModule(input_size=130)
    with pytest.raises(ConfigError, match="augmentation"):
        BAPoseDataModule(meta={"name": "coco"}, augmentation={"max_rotaton": 10})
    dm = BAPoseDataModule(input_size=SIZE, meta={"name": "coco"}, codec=BAPoseCodec(256))
    with pytest.raises(ConfigError, match="input_size"):
        _ = dm.codec


def test_synthetic_config_generates_on_first_use(coco_sample: Path, tmp_path: Path, monkeypatch) -> None:
    """data=synthetic calls ensure_dataset in prepare_data and setup; stubbed here (the generator has its own
    tests) with a copy of the COCO sample, to check the wiring and the arguments."""
    import bapose.data as data_pkg

    calls = []

    def ensure_dataset(root, num_train, num_val, image_size, seed, keypoint_set, **kw):
        calls.append(dict(root=root, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                          keypoint_set=keypoint_set, **kw))
        out = tmp_path / "gen"
        if not out.exists():
            out.mkdir()
            for f in coco_sample.glob("*.jpg"):
                shutil.copy(f, out / f.name)
            (out / "train.json").write_text((coco_sample / "test_coco.json").read_text())
        return {"train_ann": out / "train.json", "train_images": out, "val_ann": out / "train.json",
                "val_images": out}

    class FakeSynth:
        pass

    FakeSynth.ensure_dataset = staticmethod(ensure_dataset)
    monkeypatch.setattr(data_pkg, "synthetic", FakeSynth, raising=False)
    cfg = _data_cfg("synthetic", [f"data.input_size={SIZE}", "data.num_workers=0", "data.batch_size=2",
                                  "data.val_batch_size=2", "data.pin_memory=false", "data.synthetic.num_train=4",
                                  "data.synthetic.num_val=2", "data.synthetic.image_size=96"])
    dm = hydra.utils.instantiate(cfg)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert calls[0] == {"root": None, "num_train": 4, "num_val": 2, "image_size": 96, "seed": 0,
                        "keypoint_set": "coco"}
    assert len(calls) == 1  # looked up once per process, generated once
    assert dm.meta.name == "coco" and dm.val_ann_file == tmp_path / "gen" / "train.json"
    assert dm.test_ann_file == dm.val_ann_file and dm.test_dataset is dm.val_dataset
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (2, 3, SIZE, SIZE)
    assert json.loads(dm.val_ann_file.read_text())["categories"][0]["name"] == "person"


def test_synthetic_config_with_the_real_generator() -> None:
    """End to end through bapose.data.synthetic (tiny): generated json + jpg read by the same dataset class."""
    pytest.importorskip("bapose.data.synthetic")
    cfg = _data_cfg("synthetic", ["data.input_size=64", "data.num_workers=0", "data.batch_size=2",
                                  "data.val_batch_size=2", "data.pin_memory=false", "data.synthetic.num_train=4",
                                  "data.synthetic.num_val=2", "data.synthetic.image_size=96"])
    dm = hydra.utils.instantiate(cfg)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataset) >= 1 and len(dm.val_dataset) == 2
    b = next(iter(dm.train_dataloader()))
    assert b["heatmaps"].shape[1:] == (18, 16, 16) and float(b["heatmaps"][:, :-1].max()) > 0.5  # joints encoded
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (2, 3, 64, 64) and v["orig_size"].tolist() == [[96, 96], [96, 96]]
