"""The one place a :class:`BAPoseCodec` is made from configuration: ``conf/codec`` knobs + what the data says.

    codec = build_codec(cfg.codec, input_size=512, sigmas=meta.sigmas, rule_set="coco")

The datamodule (through the builder the experiment assembly gives it), ``bapose.load_model``, the codec upper bound
and the scripts all call it, so ``oks_sigmas`` and ``min_center_area: null`` are resolved the same way everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from bapose.codecs.bapose_codec import BAPoseCodec
from bapose.errors import ConfigError

log = logging.getLogger("bapose")

__all__ = ["MIN_CENTER_AREA", "build_codec", "codec_knobs"]

# The small-person rule of each dataset rule set (BAPoseCodec.min_center_area, on the annotation's original-image
# area): COCO's 32^2, as DEKR's COCOKeypoints.get_joints; none for CrowdPose-format data, as its CrowdPoseKeypoints.
MIN_CENTER_AREA = {"coco": 32.0**2, "crowdpose": 0.0}


def codec_knobs(knobs: Any) -> dict[str, Any]:
    """Plain ``BAPoseCodec`` keyword arguments from a config node, a mapping or None."""
    if knobs is None:
        return {}
    if OmegaConf.is_config(knobs):
        return dict(OmegaConf.to_container(knobs, resolve=True))
    if isinstance(knobs, Mapping):
        return dict(knobs)
    raise ConfigError(f"codec: expected a mapping of BAPoseCodec fields (conf/codec), got {type(knobs).__name__}")


def build_codec(knobs: Any = None, *, input_size: int, sigmas: Sequence[float] | None = None,
                rule_set: str | None = None, stored: Mapping[str, Any] | None = None,
                name: str = "data") -> BAPoseCodec:
    """A codec from ``conf/codec`` knobs.

    Args:
        knobs: the ``codec`` group's fields (a config node or mapping); a given ``input_size`` must equal
            ``input_size``.
        input_size: the training crop / evaluation short side (``data.input_size``).
        sigmas: the joint set's OKS sigmas, for pose NMS by OKS where ``oks_sigmas`` is null.
        rule_set: ``"coco"`` | ``"crowdpose"``: resolves ``min_center_area: null`` to the rule set's small-person
            rule (logged once). None (no dataset: loading a checkpoint to predict) leaves the codec's default, which
            only shapes training targets.
        stored: a checkpoint's ``bapose.codec`` entry: decode knobs left null take its values.
        name: the dataset's name, for the log line.
    """
    kwargs = codec_knobs(knobs)
    if kwargs.setdefault("input_size", int(input_size)) != int(input_size):
        raise ConfigError(f"codec field 'input_size' is {kwargs['input_size']}; expected data.input_size "
                          f"{input_size}")
    if "min_center_area" in kwargs and kwargs["min_center_area"] is None:
        if rule_set is None:
            del kwargs["min_center_area"]
        else:
            if rule_set not in MIN_CENTER_AREA:
                raise ConfigError(f"rule set {rule_set!r}; expected one of {sorted(MIN_CENTER_AREA)}")
            kwargs["min_center_area"] = MIN_CENTER_AREA[rule_set]
            log.info("data '%s': %s rules, codec.min_center_area=%g (people smaller than that get no center)", name,
                     rule_set, kwargs["min_center_area"])
    if kwargs.get("oks_sigmas") is None and sigmas is not None:  # pose NMS by OKS compares poses as the evaluator
        kwargs["oks_sigmas"] = tuple(float(s) for s in sigmas)
    codec = BAPoseCodec(**kwargs)
    return codec.with_checkpoint_defaults(stored) if stored is not None else codec
