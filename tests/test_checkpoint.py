"""Checkpoint safety: atomic writes, weights-only loading with an allow-list, clear errors for bad files."""

from __future__ import annotations

import functools
import os
import pickle

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bapose.errors import CheckpointError
from bapose.training import BAPoseModule
from bapose.checkpoints.io import (
    AtomicCheckpointIO,
    extract_net_state,
    load_checkpoint_safely,
    load_net_weights,
)


class TinyNet(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.num_keypoints = k
        self.conv = nn.Conv2d(3, 3 * k + 1, 4, stride=4)

    def forward(self, x):
        y = self.conv(x)
        return y[:, : self.num_keypoints + 1], y[:, self.num_keypoints + 1:]


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8, generator=g),
                "heatmaps": torch.rand(4, 4, 4, generator=g), "heatmap_weights": torch.ones(4, 4, 4),
                "offsets": torch.randn(6, 4, 4, generator=g), "offset_weights": torch.ones(1, 4, 4), "image_id": i}


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory) -> str:
    """A real Lightning checkpoint: Adam state, MultiStepLR (a Counter inside), ModelCheckpoint state, EMA, metadata."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ckpt")
    module = BAPoseModule(TinyNet(), codec=object(), optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
                          scheduler=functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[2, 3]),
                          ema_decay=0.9, model_config={"_target_": "TinyNet", "k": 3})
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=out, save_last=True)])
    trainer.fit(module, torch.utils.data.DataLoader(_Data(), batch_size=2))
    return str(out / "last.ckpt")


def test_lightning_checkpoint_loads_weights_only_with_the_allow_list(lightning_ckpt, tmp_path):
    ckpt = load_checkpoint_safely(lightning_ckpt)
    assert ckpt["global_step"] == 2
    assert ckpt["bapose"]["num_keypoints"] == 3 and ckpt["bapose"]["model"]["k"] == 3 and ckpt["bapose"]["ema"]
    assert ckpt["lr_schedulers"][0]["milestones"] == {2: 1, 3: 1}
    # `save_hyperparameters()` of a Hydra config stores omegaconf containers: plain weights_only loading refuses them,
    # the allow-list takes them (and nothing executable, see the `evil` checkpoint below)
    with_hparams = tmp_path / "hparams.ckpt"
    torch.save({**ckpt, "hyper_parameters": {"cfg": OmegaConf.create({"lr": 1e-3, "milestones": [90, 120]})}},
               with_hparams)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(with_hparams, weights_only=True)
    assert load_checkpoint_safely(with_hparams)["hyper_parameters"]["cfg"]["milestones"] == [90, 120]
    # EMA weights are preferred; net.* is the fallback
    ema = extract_net_state(ckpt)
    raw = extract_net_state(ckpt, prefer_ema=False)
    assert set(ema) == set(raw) == {"conv.weight", "conv.bias"}
    assert not torch.equal(ema["conv.weight"], raw["conv.weight"])
    assert torch.equal(ema["conv.weight"], ckpt["state_dict"]["ema.module.conv.weight"])


def test_crash_during_save_leaves_previous_last_ckpt_loadable(lightning_ckpt, tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    good = load_checkpoint_safely(lightning_ckpt)
    io.save_checkpoint(good, last)

    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)  # half the archive is on disk when the "machine dies"
        raise KeyboardInterrupt("simulated crash during checkpoint write")

    newer = dict(good, global_step=999)
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint(newer, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]  # no temp file left behind
    back = load_checkpoint_safely(last)
    assert back["global_step"] == good["global_step"]
    torch.testing.assert_close(back["state_dict"]["net.conv.weight"], good["state_dict"]["net.conv.weight"])

    # without the atomic write the same crash destroys the file: the failure mode this guards against
    plain = tmp_path / "plain.ckpt"
    torch.save(good, plain)
    with open(plain, "r+b") as f:
        f.truncate(os.path.getsize(plain) // 2)
    with pytest.raises(CheckpointError, match=r"plain\.ckpt.*truncated or corrupt"):
        load_checkpoint_safely(plain)


def test_nonfinite_weights_are_never_written(lightning_ckpt, tmp_path):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    good = load_checkpoint_safely(lightning_ckpt)
    io.save_checkpoint(good, last)
    bad = dict(good, state_dict={**good["state_dict"], "net.conv.bias": torch.full((10,), float("nan"))})
    with pytest.raises(CheckpointError, match=r"net\.conv\.bias"):
        io.save_checkpoint(bad, last)
    assert torch.isfinite(load_checkpoint_safely(last)["state_dict"]["net.conv.bias"]).all()


def test_truncated_missing_and_foreign_files_raise_checkpoint_error(lightning_ckpt, tmp_path):
    data = open(lightning_ckpt, "rb").read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt.*truncated or corrupt"):
        load_checkpoint_safely(cut)
    with pytest.raises(CheckpointError, match=r"nope\.ckpt.*does not exist"):
        load_checkpoint_safely(tmp_path / "nope.ckpt")
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": functools.partial(print, "pwned")}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*allow-list"):
        load_checkpoint_safely(evil)
    no_state = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, no_state)
    with pytest.raises(CheckpointError, match=r"plain\.pt.*'state_dict'"):
        load_checkpoint_safely(no_state)


def test_checkpoint_of_another_joint_count_names_keys_and_shapes(lightning_ckpt):
    net = TinyNet(k=4)
    with pytest.raises(CheckpointError) as err:
        load_net_weights(net, lightning_ckpt, expected_meta={"num_keypoints": 4})
    msg = str(err.value)
    assert "last.ckpt" in msg and "'bapose.num_keypoints' is 3 but the model expects 4" in msg
    assert "conv.weight: checkpoint (10, 3, 4, 4) vs model (13, 3, 4, 4)" in msg

    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 10, 4, stride=4)
            self.head = nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match=r"2 keys missing from the checkpoint: head\.bias, head\.weight"):
        load_net_weights(Other(), lightning_ckpt)
    ok = TinyNet(k=3)
    load_net_weights(ok, lightning_ckpt)
    saved = load_checkpoint_safely(lightning_ckpt)["state_dict"]
    torch.testing.assert_close(ok.conv.weight, saved["ema.module.conv.weight"])
