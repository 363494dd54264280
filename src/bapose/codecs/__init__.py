"""Targets and decoding: :class:`BAPoseCodec` (encode / decode), flip-test helpers, optional pose rescoring."""

from bapose.codecs.bapose_codec import BAPoseCodec, Poses, flip_back, merge_flip
from bapose.codecs.rescore import RescoreNet, load_rescore, oks, pose_features, save_rescore, train_rescore

__all__ = ["BAPoseCodec", "Poses", "RescoreNet", "flip_back", "load_rescore", "merge_flip", "oks", "pose_features",
           "save_rescore", "train_rescore"]
