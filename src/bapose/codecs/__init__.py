"""Targets and the decode geometry: :class:`BAPoseCodec` (encode, candidates); OKS, pose NMS and joint refinement
shared by both decoders (:mod:`bapose.codecs.oks`, :mod:`bapose.codecs.grouping`); optional pose rescoring."""

from bapose.codecs.bapose_codec import BAPoseCodec, Candidates
from bapose.codecs.build import MIN_CENTER_AREA, build_codec
from bapose.codecs.rescore import RescoreNet, load_rescore, oks, pose_features, save_rescore, train_rescore

__all__ = ["MIN_CENTER_AREA", "BAPoseCodec", "Candidates", "build_codec", "RescoreNet", "load_rescore", "oks", "pose_features", "save_rescore",
           "train_rescore"]
