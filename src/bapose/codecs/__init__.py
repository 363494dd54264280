"""Targets and decoding: :class:`BAPoseCodec` (encode / decode), flip-test helpers."""

from bapose.codecs.bapose_codec import BAPoseCodec, Poses, flip_back, merge_flip

__all__ = ["BAPoseCodec", "Poses", "flip_back", "merge_flip"]
