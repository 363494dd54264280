"""Net -> people: :class:`Predictor` (flip test, test scales and their merge, rescoring, pose NMS, images grouped by
their own padded size) and the decoding steps after the codec's candidates. The one path validation, ``bapose-eval``,
``bapose-predict``, the rescoring stage and the export check go through."""

from bapose.predictor.core import (Predictor, group_by, images_to_float, predict, same_size_batches,
                                   to_original)
from bapose.predictor.decode import (DecodeTrace, Poses, decode, decode_multiscale, joint_scores, refine,
                                     remove_duplicates, rescore, sample, trace)
from bapose.predictor.flip import flip_back, merge_flip, mirror, net_outputs

__all__ = ["DecodeTrace", "Poses", "Predictor", "decode", "decode_multiscale", "flip_back", "group_by",
           "images_to_float", "joint_scores", "merge_flip", "mirror", "net_outputs", "predict", "refine",
           "remove_duplicates", "rescore", "same_size_batches", "sample", "to_original", "trace"]
