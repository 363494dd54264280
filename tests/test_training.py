"""Loss, LightningModule behaviours (non-finite guard, warmup, EMA) and a fast_dev_run of the real train config."""

from __future__ import annotations

import functools
import json
import math

import lightning as L
import pytest
import torch
from torch import nn

from bapose.training.evaluate import evaluate
from bapose.build import compose_config
from bapose.training.fit import train
from bapose.errors import CheckpointError, ConfigError
from bapose.training import BAPoseLoss, BAPoseModule, NonFiniteLossError
from bapose.checkpoints.io import AtomicCheckpointIO, load_checkpoint_safely

# the real configs, shrunk: 64 px generated images, a handful of them, no workers, CSV logging only
TINY = [
    "data.input_size=64", "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.image_size=64",
    "data.batch_size=2", "data.val_batch_size=2", "data.num_workers=0", "data.persistent_workers=false",
    "data.pin_memory=false", "logger=[csv]", "draw_images=1",
]


# ---------------------------------------------------------------------------------------------------- loss
def _targets(b=2, k=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    hm = torch.rand(b, k + 1, h, w, generator=g)
    hw = torch.where(hm > 0.5, 1.0, 0.1)
    off = torch.randn(b, 2 * k, h, w, generator=g) * 3
    ow = torch.zeros(b, 1, h, w)
    ow[0, 0, 2:4, 2:5] = 0.25  # 6 positive pixels in image 0, 2 in image 1
    ow[1, 0, 5, 5:7] = 0.5
    return hm, hw, off, ow


def test_loss_is_zero_for_perfect_predictions_and_counts_positive_entries():
    hm, hw, off, ow = _targets()
    loss = BAPoseLoss()
    assert loss.offset_weight == 0.002  # MMPose's factor for our (MMPose's) offset weights, not DEKR's 0.03
    zero = loss(hm, off, hm, hw, off, ow)
    assert float(zero["loss"]) == 0.0

    pred_hm = hm + 0.1
    pred_off = off + 2.0  # |err| = 2 > beta: smooth-L1 = 2 - beta/2
    out = loss(pred_hm, pred_off, hm, hw, off, ow)
    k2 = off.shape[1]
    exp_hm = float((hw * 0.01).mean())
    num_pos = 8 * k2  # positive pixels x 2K channels, as MMPose and DEKR count (per entry, over the batch)
    exp_off = 0.002 * float((ow.expand_as(off) * (2.0 - 0.5 / 9)).sum()) / num_pos
    assert float(out["heatmap"]) == pytest.approx(exp_hm, rel=1e-5)
    assert float(out["offset"]) == pytest.approx(exp_off, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(exp_hm + exp_off, rel=1e-5)
    # (1, h, w) weights broadcast exactly like explicit (2K, h, w) weights
    full = loss(pred_hm, pred_off, hm, hw, off, ow.expand_as(off).clone())
    assert float(full["offset"]) == pytest.approx(float(out["offset"]), rel=1e-6)


def test_loss_without_people_does_not_divide_by_zero():
    hm, hw, off, ow = _targets()
    out = BAPoseLoss()(hm, off + 1, hm, hw, off, torch.zeros_like(ow))
    assert float(out["offset"]) == 0.0 and math.isfinite(float(out["loss"]))


# ---------------------------------------------------------------------------------------------------- module
class TinyNet(nn.Module):
    """Stand-in with the BAPoseNet contract: stride 4, K+1 heatmaps, 2K offsets."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.num_keypoints, self.stride = k, 4
        self.conv = nn.Conv2d(3, 3 * k + 1, 4, stride=4)
        self.bn = nn.BatchNorm2d(3 * k + 1)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return y[:, : self.num_keypoints + 1], y[:, self.num_keypoints + 1:]


class _Batches(torch.utils.data.Dataset):
    def __init__(self, n: int, k: int = 3, poison: set[int] = frozenset()) -> None:
        self.n, self.k, self.poison = n, k, poison

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        hm = torch.rand(self.k + 1, 4, 4, generator=g)
        if i in self.poison:
            hm[0, 0, 0] = float("nan")
        return {"image": torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8, generator=g), "heatmaps": hm,
                "heatmap_weights": torch.ones_like(hm), "offsets": torch.randn(2 * self.k, 4, 4, generator=g),
                "offset_weights": torch.ones(1, 4, 4), "image_id": i}


def _module(**kw) -> BAPoseModule:
    torch.manual_seed(0)
    return BAPoseModule(TinyNet(), codec=object(), optimizer=functools.partial(torch.optim.SGD, lr=0.1), **kw)


def _fit(module, data, tmp_path, **trainer_kw):
    kw = {"logger": False, "enable_checkpointing": False, **trainer_kw}
    trainer = L.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, **kw)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1))
    return trainer


def test_nonfinite_loss_step_is_skipped_and_counted(tmp_path):
    module = _module(max_nonfinite_steps=3)
    before = {k: v.detach().clone() for k, v in module.net.named_parameters()}
    trainer = _fit(module, _Batches(1, poison={0}), tmp_path, max_steps=1)
    # the only batch was NaN: no update happened, the counter says so, the weights are untouched and finite
    assert module.nonfinite_steps == 1
    assert all(torch.equal(before[k], v) for k, v in module.net.named_parameters())
    assert trainer.optimizers[0].state == {}  # SGD never stepped a parameter

    module = _module(max_nonfinite_steps=3)
    _fit(module, _Batches(3, poison={1}), tmp_path, max_epochs=1)
    assert module.nonfinite_steps == 1 and module._nonfinite_in_a_row == 0  # a good step resets the streak


def test_nonfinite_streak_stops_training_with_message_and_no_checkpoint(tmp_path):
    module = _module(max_nonfinite_steps=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, max_epochs=1,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True,
                                                                       every_n_train_steps=1)])
    with pytest.raises(NonFiniteLossError, match=r"non-finite for 2 optimizer steps in a row.*max_nonfinite_steps=2"):
        trainer.fit(module, torch.utils.data.DataLoader(_Batches(4, poison={0, 1, 2, 3}), batch_size=1))
    # the skipped steps never touched the weights: whatever was saved holds exactly the initial, finite weights
    init = _module(max_nonfinite_steps=2).net.state_dict()
    saved = sorted((tmp_path / "ck").glob("*.ckpt"))
    assert saved
    for path in saved:
        state = load_checkpoint_safely(path)["state_dict"]
        assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
        torch.testing.assert_close(state["net.conv.weight"], init["conv.weight"])


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path):
    module = _module()
    with torch.no_grad():
        module.net.conv.weight[0, 0, 0, 0] = float("inf")
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)  # the module's entry; the save's one finite-weights check is the IO's
    with pytest.raises(CheckpointError, match=r"net\.conv\.weight"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").exists()


def test_warmup_is_a_torch_scheduler_the_lr_monitor_sees(tmp_path):
    seen = []

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    monitor = L.pytorch.callbacks.LearningRateMonitor(logging_interval="step")
    module = _module(warmup_steps=4)
    trainer = _fit(module, _Batches(5), tmp_path, max_epochs=1, callbacks=[Spy(), monitor], log_every_n_steps=1,
                   logger=L.pytorch.loggers.CSVLogger(tmp_path))
    # (s + 1) / 4 of the LR at step s, then the full LR: the LR the optimizer steps with ...
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    # ... is the one Lightning's LR monitor logs (one series for the one optimizer), and a torch LinearLR holds it
    assert monitor.lrs["lr-SGD"] == pytest.approx(seen)
    assert [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs] == ["LinearLR"]


def test_warmup_chains_with_an_epoch_schedule_and_resumes(tmp_path):
    # per-step warm-up over 3 steps x per-epoch MultiStepLR (x0.1 after epoch 0): 2 steps per epoch
    sched = functools.partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[1], gamma=0.1)
    seen = []

    class Spy(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    ck = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0,
                                             save_on_train_epoch_end=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, max_epochs=1, callbacks=[Spy(), ck])
    trainer.fit(_module(warmup_steps=3, scheduler=sched), torch.utils.data.DataLoader(_Batches(2), batch_size=1))
    assert seen == pytest.approx([0.1 / 3, 0.2 / 3])
    # resumed from the epoch-0 checkpoint: the warm-up goes on at step 2 on top of the decayed epoch LR
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, max_epochs=2, callbacks=[Spy()])
    trainer.fit(_module(warmup_steps=3, scheduler=sched), torch.utils.data.DataLoader(_Batches(2), batch_size=1),
                ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert seen[2:] == pytest.approx([0.01, 0.01])
    names = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
    assert names == ["MultiStepLR", "LinearLR"]  # the configured schedule first: its position is what a resume logs


def test_warmup_refuses_a_scheduler_that_would_undo_it():
    sched = functools.partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda e: 1.0)
    module = _module(warmup_steps=3, scheduler=sched)
    with pytest.raises(ConfigError, match=r"warmup_steps.*LambdaLR"):
        module.configure_optimizers()


def test_ema_is_timms_model_ema_and_is_used_for_eval(tmp_path):
    from timm.utils import ModelEmaV3

    module = _module(ema_decay=0.9)
    assert isinstance(module.ema, ModelEmaV3) and module.eval_net is module.ema.module
    init = {k: v.clone() for k, v in module.net.state_dict().items()}
    _fit(module, _Batches(3), tmp_path, max_epochs=1)
    # first update copies the net (decay 0 at step 1), then decay 1 - 2^-0.75 at step 2, 1 - 3^-0.75 at step 3
    ema_w, net_w = module.ema.module.conv.weight, module.net.conv.weight
    assert not torch.equal(ema_w, net_w) and not torch.equal(ema_w, init["conv.weight"])
    # BatchNorm statistics are copied, not averaged
    torch.testing.assert_close(module.ema.module.bn.running_mean, module.net.bn.running_mean)
    # checkpoints keep the EMA weights under ema.module.* (what bapose.load_model prefers)
    state = module.state_dict()
    assert "ema.module.conv.weight" in state and not any(k.startswith("ema.") and "module" not in k for k in state)


def test_ema_checkpoint_of_the_hand_written_ema_still_loads(tmp_path):
    module = _module(ema_decay=0.9)
    ckpt = {"state_dict": {**module.state_dict(), "ema.num_updates": torch.tensor(7)}, "bapose": {}}
    module.on_load_checkpoint(ckpt)  # the legacy counter is dropped before Lightning's strict load
    module.load_state_dict(ckpt["state_dict"], strict=True)


# ---------------------------------------------------------------------------------------------------- real config
def test_fast_dev_run_of_the_real_train_config(tmp_path):
    torch.set_num_threads(1)
    cfg = compose_config(["debug=fast_dev_run", *TINY], output_dir=tmp_path)
    metrics = train(cfg)
    for key in ("val/AP", "val/AR", "test/AP"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["global_step"] == 1 and metrics["nonfinite_steps"] == 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["val/AP"] == metrics["val/AP"]
    png = tmp_path / "val_predictions.png"
    assert png.is_file() and png.stat().st_size > 100


def test_eval_of_saved_checkpoint_reproduces_training_ap(tmp_path):
    torch.set_num_threads(1)
    run = tmp_path / "train"
    # this test compares the people of training's validation and of bapose-eval, so it needs a 6-step net that finds
    # some: He-scaled heads (with DEKR's Normal(0, 0.001) ones the BN running statistics lag and every score is
    # ~0), and centers for the 64 px images' people, all below COCO's 32^2 in their own pixels (the COCO rule)
    cfg = compose_config(["debug=limit", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "run_test=false",
                          "optimizer.lr=0.003", "+model.head_init=kaiming", "codec.min_center_area=0", *TINY],
                         output_dir=run)
    metrics = train(cfg)
    best = metrics["best_model_path"]
    assert best.endswith(".ckpt") and (run / "checkpoints" / "last.ckpt").is_file()

    ev = compose_config([f"ckpt_path={best}", *[o for o in TINY if not o.startswith(("logger", "draw"))],
                         "trainer.limit_val_batches=2"], config_name="eval", output_dir=tmp_path / "eval")
    out = evaluate(ev)
    for k in ("AP", "AP50", "AR"):
        assert out[f"val/{k}"] == pytest.approx(metrics[f"val/{k}"], abs=1e-12)
    # AP of a 6-step model is ~0, so compare what it is computed from: the very same people, keypoints and scores
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    at_train = json.loads((run / "val_results.json").read_text())
    assert len(results) > 0 and {"image_id", "keypoints", "score"} <= set(results[0])
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    assert sorted(results, key=key) == sorted(at_train, key=key)


def test_validation_batches_of_mixed_sizes_give_each_image_its_batch_of_one_poses() -> None:
    """D-WASP's image pool averages over the whole input: an image padded to a larger neighbour would see the padding.
    Validation runs images in groups of their own padded size, so a mixed batch decodes each image as alone."""
    from bapose.build import compose_config
    from bapose.codecs import BAPoseCodec
    from bapose.models import build_model

    torch.manual_seed(0)
    net = build_model(compose_config(["model=bapose_w18s", "data=coco"], config_name="profile").model,
                      pretrained=False).eval()
    for final in (net.heatmap_head.final, net.offset_head.final):
        torch.nn.init.normal_(final.weight, std=0.05)  # outputs that depend on the whole net (and its image pool)
    module = BAPoseModule(net, codec=BAPoseCodec(input_size=64, center_threshold=0.0, max_people=5)).eval()
    g = torch.Generator().manual_seed(3)
    wide, square = torch.rand(3, 64, 96, generator=g), torch.rand(3, 64, 64, generator=g)
    batch = torch.zeros(2, 3, 64, 96)
    batch[0], batch[1, :, :, :64] = wide, square
    mixed = module._eval_predict({"image": batch, "valid_size": torch.tensor([[64, 96], [60, 61]])}, False, (1.0,))
    alone = [module._eval_predict({"image": x[None], "valid_size": torch.tensor([[64, 64]])}, False, (1.0,))[0]
             for x in (wide, square)]
    for got, want in zip(mixed, alone, strict=True):
        assert got.poses.shape == want.poses.shape and got.poses.shape[0] > 0
        torch.testing.assert_close(got.poses, want.poses, atol=1e-4, rtol=1e-4)
    # and padded to the wide image's size, the square one's people really change (what the grouping avoids)
    padded = module.predict_poses(batch[1:], flip=False)[0]
    assert padded.poses.shape != alone[1].poses.shape or (padded.poses - alone[1].poses).abs().max() > 1e-3


def test_bf16_mixed_fit_validation_and_final_evaluation_decode_in_float32(tmp_path, monkeypatch) -> None:
    """The gpu / ddp presets train in bf16-mixed; on CPU the same Lightning precision plugin runs the net in bf16
    autocast. Fit, validation, checkpoints and the final evaluation run through it, the net really answers in bf16,
    and every map reaches the codec in float32 (what the issue's 1-4 px decoding error came from)."""
    from bapose.codecs import BAPoseCodec
    from bapose.models.bapose import BAPoseNet

    net_dtypes, codec_dtypes = set(), set()
    forward, candidates = BAPoseNet.forward, BAPoseCodec.candidates

    def net_spy(self, images):
        out = forward(self, images)
        net_dtypes.update(t.dtype for t in out)
        return out

    def codec_spy(self, heatmaps, offsets):
        codec_dtypes.update((heatmaps.dtype, offsets.dtype))
        return candidates(self, heatmaps, offsets)

    monkeypatch.setattr(BAPoseNet, "forward", net_spy)
    monkeypatch.setattr(BAPoseCodec, "candidates", codec_spy)
    run = tmp_path / "run"
    metrics = train(compose_config([*TINY, "draw_images=0", "debug=limit", "trainer.max_epochs=2",
                                    "trainer.limit_train_batches=3", "trainer.precision=bf16-mixed",
                                    "codec.center_threshold=-1"], output_dir=run))
    assert torch.bfloat16 in net_dtypes and codec_dtypes == {torch.float32}
    assert metrics["global_step"] == 6 and metrics["nonfinite_steps"] == 0 and math.isfinite(metrics["val/AP"])
    people = json.loads((run / "val_results.json").read_text())
    assert people and all(math.isfinite(v) for p in people for v in p["keypoints"])
    # master weights stay float32 in the checkpoint (bf16 is the compute dtype only)
    state = load_checkpoint_safely(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert {v.dtype for k, v in state.items() if v.is_floating_point()} == {torch.float32}
