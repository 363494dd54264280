"""The module's hyper-parameters: its objects (net, codec, loss, optimizer, scheduler) as plain configs, and back.

``BAPoseModule`` saves the configs with Lightning's ``save_hyperparameters`` and rebuilds whatever is not given from
them, so ``BAPoseModule.load_from_checkpoint(path)`` works on any bapose checkpoint that carries them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from hydra.utils import instantiate
from torch import nn

from bapose.codecs import BAPoseCodec
from bapose.errors import ConfigError
from bapose.training.loss import BAPoseLoss

__all__ = ["codec_spec", "from_configs", "loss_spec"]


def codec_spec(codec: Any) -> dict[str, Any] | None:
    """A codec dataclass's fields as plain values (tuples as lists): the checkpoint's ``bapose.codec`` too."""
    if codec is None or not dataclasses.is_dataclass(codec):
        return None
    spec = dataclasses.asdict(codec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def loss_spec(loss: nn.Module) -> dict[str, Any] | None:
    """The constructor arguments of a :class:`BAPoseLoss` (None for another loss: it is not rebuilt from hparams)."""
    if not isinstance(loss, BAPoseLoss):
        return None
    return {"heatmap_weight": loss.heatmap_weight, "offset_weight": loss.offset_weight, "beta": loss.beta}


def from_configs(net: nn.Module | None, codec: Any, loss: nn.Module | None, optimizer: Any, scheduler: Any,
                 model_config: Mapping[str, Any] | None, codec_config: Mapping[str, Any] | None,
                 loss_config: Mapping[str, Any] | None, optimizer_config: Mapping[str, Any] | None,
                 scheduler_config: Mapping[str, Any] | None) -> tuple[nn.Module, Any, nn.Module, Any, Any]:
    """The module's objects: those given, else built from their saved configs (``load_from_checkpoint``)."""
    if net is None:
        if not model_config:
            raise ConfigError("BAPoseModule: no net and no 'model_config' to build one from; expected a net, or the "
                              "model config a checkpoint's hyper_parameters carry")
        from bapose.build import build_net  # the builder above this layer's modules: only for saved configs

        net = build_net(model_config, pretrained=False, init_from=None)  # the weights come from the checkpoint
    if codec is None and codec_config:
        codec = BAPoseCodec(**{k: tuple(v) if isinstance(v, list) else v for k, v in codec_config.items()})
    loss = loss if loss is not None else BAPoseLoss(**dict(loss_config or {}))
    # the optimizer / scheduler nodes are Hydra partials (`_partial_: true`)
    optimizer = optimizer if optimizer is not None or not optimizer_config else instantiate(dict(optimizer_config))
    scheduler = scheduler if scheduler is not None or not scheduler_config else instantiate(dict(scheduler_config))
    return net, codec, loss, optimizer, scheduler
