"""Experiment assembly: compose the Hydra config, and build the net, codec, datamodule and module it describes.

    cfg = compose_config(["experiment=demo", "trainer.max_epochs=1"])
    datamodule = build_datamodule(cfg)           # given its codec builder (build_codec over cfg.codec)
    module = build_module(cfg, codec=datamodule.codec)   # the net built by build_net (init_from applied here)

Training (:mod:`bapose.training.fit`), evaluation (:mod:`bapose.training.evaluate`), scripts, notebooks and tests
assemble through these functions; the CLIs are thin Hydra mains over them. Defaults live in ``conf/`` only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from bapose.codecs.build import build_codec
from bapose.errors import BAPoseError, ConfigError
from bapose.models import build_model
from bapose.paths import config_dir

log = logging.getLogger("bapose")

__all__ = ["build_codec", "build_datamodule", "build_module", "build_net", "compose_config", "instantiate_checked",
           "instantiate_list", "module_config"]


def compose_config(overrides: list[str] | tuple[str, ...] = (), config_name: str = "train",
                   output_dir: str | Path | None = None) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as ``bapose-train`` would (for tests, notebooks and scripts).

    The Hydra runtime config is installed too (``${hydra:...}`` interpolations resolve); ``output_dir`` replaces
    ``paths.output_dir`` (Hydra only creates run folders in ``main``).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import bapose.utils.resolvers  # noqa: F401 - registers the ${bapose.*} resolvers before Hydra composes

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


def instantiate_checked(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a bapose error of a constructor through as itself.

    Hydra wraps whatever a ``_target_`` raises in an ``InstantiationException`` (the message becomes the repr of the
    original plus ``full_key``): a ``ConfigError`` naming the field and what was expected would reach the user as
    Hydra's error, and ``except ConfigError`` would miss it.
    """
    with _own_errors():
        return instantiate(node, *args, **kwargs)


@contextlib.contextmanager
def _own_errors() -> Iterator[None]:
    """Re-raise the bapose error inside Hydra's ``InstantiationException`` as itself (others stay Hydra's)."""
    try:
        yield
    except InstantiationException as e:
        cause: BaseException | None = e.__cause__
        while cause is not None and not isinstance(cause, BAPoseError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Build every ``_target_`` node of a ``{name: node}`` group (callbacks, loggers); ``None`` / empty gives ``[]``.
    A factory that returns ``None`` (the W&B logger with ``WANDB_MODE=disabled``) contributes nothing."""
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"expected a mapping of {{name: {{_target_: ...}}}}, got {type(cfg).__name__}")
    built = [instantiate_checked(node) for node in cfg.values() if isinstance(node, DictConfig) and "_target_" in node]
    return [obj for obj in built if obj is not None]


def build_net(cfg_model: Any, **overrides: Any) -> Any:
    """The net of a ``conf/model`` node, then ``init_from`` applied: every layer of that checkpoint (bapose, converted
    or raw DEKR) whose weights fit is loaded, one log line says what (``net.init_report`` keeps it; None without).

    ``overrides`` replace node values (``pretrained=False``, ``init_from=None``, ...).
    """
    node = OmegaConf.to_container(cfg_model, resolve=True) if OmegaConf.is_config(cfg_model) else dict(cfg_model)
    node.update(overrides)
    source = node.get("init_from")
    with _own_errors():
        net = build_model(node)
    net.init_report = None
    if source:
        from bapose.checkpoints.init_from import init_from_checkpoint  # reads checkpoints and DEKR files

        net.init_report = init_from_checkpoint(net, source)
    return net


def _codec_builder(cfg: DictConfig) -> Any:
    """What the datamodule is given: :func:`build_codec` over ``cfg.codec``, called once it knows its joint set and
    rule set; ``codec: null`` builds the codec's own defaults."""
    knobs = OmegaConf.to_container(cfg.codec, resolve=True) if cfg.get("codec") is not None else None
    return functools.partial(build_codec, knobs)


def build_datamodule(cfg: DictConfig) -> Any:
    """The datamodule of ``cfg.data``, given the builder of its codec (the one codec instance that the dataset
    encodes with and the module decodes with)."""
    datamodule = instantiate_checked(cfg.data, codec=_codec_builder(cfg))
    if cfg.data.get("num_keypoints", 0) is None:
        # K read from the dataset's json (data.num_keypoints: null): the model config reads ${data.num_keypoints}
        with open_dict(cfg):
            cfg.data.num_keypoints = datamodule.meta.num_keypoints
    return datamodule


def module_config(node: DictConfig) -> DictConfig:
    """The ``module`` config, resolved, without bapose's own ``optimizer.scale_lr`` key (torch's optimizers do not
    take it; :func:`bapose.training.runs.scale_lr_to_global_batch` applies it)."""
    plain = OmegaConf.to_container(node, resolve=True)
    if isinstance(plain.get("optimizer"), dict):
        plain["optimizer"].pop("scale_lr", None)
    return OmegaConf.create(plain)


def build_module(cfg: DictConfig, codec: Any, **overrides: Any) -> Any:
    """The net of ``cfg.model`` (:func:`build_net`) wrapped in ``cfg.module`` (no data is touched)."""
    net = build_net(cfg.model)
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    node = module_config(cfg.module)
    plain = OmegaConf.to_container(node)
    # objects go in through a partial: Hydra would try to turn a dataclass kwarg (the codec) into a config node;
    # the optimizer / scheduler nodes go in as configs too, for the module's saved hyper-parameters
    factory = instantiate_checked(node, _partial_=True)
    return factory(net=net, codec=codec, model_config=model_config, optimizer_config=plain.get("optimizer"),
                   scheduler_config=plain.get("scheduler"), **overrides)
