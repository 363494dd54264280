"""Pose rescoring (DESIGN.md §4, as DEKR): an MLP predicts each decoded pose's OKS from its shape and joint scores.

A bottom-up pose score (mean joint score) ranks people by how confident the heatmaps are, not by how right the pose
is; AP sorts detections by score, so a score that tracks OKS better raises AP. The features are scale-free, so one
net serves every input size and both decode frames (input pixels, original pixels):

- per skeleton link ``(a, b)``: the link vector ``p_b - p_a`` and its length, divided by the diagonal of the pose's
  joint box;
- the K joint scores.

The codec multiplies each pose's score by the predicted OKS before pose NMS (:class:`BAPoseCodec` ``rescore_path``).
A net converted from DEKR's release (``bapose-convert dekr-rescore``) reads DEKR's own features instead
(:func:`dekr_pose_features`, ``features="dekr"``) and its output is used unbounded, as DEKR uses it.
Training pairs come from a checkpoint's predictions on the training set: the target of a prediction is its OKS
with the best-matching ground-truth person of the same image (:func:`oks`, COCO's formula).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bapose.codecs.oks import gt_oks_scale, oks_matrix
from bapose.errors import DataError
from bapose.io import read_json

Skeleton = tuple[tuple[int, int], ...]


def _as_skeleton(skeleton: Sequence[Sequence[int]]) -> Skeleton:
    return tuple((int(a), int(b)) for a, b in skeleton)


def num_features(num_keypoints: int, skeleton: Sequence[Sequence[int]]) -> int:
    """Length of :func:`pose_features` rows: 3 per link (dx, dy, length) + K joint scores."""
    return 3 * len(skeleton) + num_keypoints


def pose_features(poses: Tensor | np.ndarray, skeleton: Sequence[Sequence[int]]) -> Tensor:
    """Scale-free shape + confidence features of each pose.

    Args:
        poses: ``(M, K, 3)`` (x, y, joint score), any pixel frame.
        skeleton: L 0-based joint pairs ``(a, b)``.

    Returns:
        float32 ``(M, 3L + K)``: ``[dx_1..dx_L, dy_1..dy_L, len_1..len_L]`` of the links ``p_b - p_a`` divided by the
        diagonal of the pose's joint box, then the K joint scores. On ``poses``' device (CPU for numpy input).
    """
    p = torch.as_tensor(poses).float()
    if p.dim() != 3 or p.shape[-1] != 3:
        raise DataError(f"rescore: field 'poses' has shape {tuple(p.shape)}; expected (M, K, 3)")
    k = p.shape[1]
    sk = _as_skeleton(skeleton)
    if any(not (0 <= a < k and 0 <= b < k) for a, b in sk):
        raise DataError(f"rescore: skeleton {list(sk)} has a joint out of range 0..{k - 1} for poses with K={k}")
    xy = p[..., :2]
    # the joint box diagonal: a pixel-free unit (a far-away person and a near one with the same pose look the same)
    diag = (xy.amax(1) - xy.amin(1)).norm(dim=-1).clamp(min=1e-6)  # (M,)
    a = torch.tensor([s[0] for s in sk], dtype=torch.long, device=p.device)
    b = torch.tensor([s[1] for s in sk], dtype=torch.long, device=p.device)
    links = (xy[:, b] - xy[:, a]) / diag[:, None, None]  # (M, L, 2)
    return torch.cat([links[..., 0], links[..., 1], links.norm(dim=-1), p[..., 2]], 1)


def dekr_pose_features(poses: Tensor | np.ndarray, links: Sequence[Sequence[int]], torso: Sequence[int] = (9, 11),
                       min_torso: float = 1.0) -> Tensor:
    """DEKR's rescoring features (``lib/utils/rescore.py`` ``get_feature``) of each pose.

    Per link ``(a, b)``: ``p_a - p_b`` and its length, divided by the mean length of the two ``torso`` links (at
    least ``min_torso`` pixels; DEKR clamps at 1 pixel of the original image); then the K joint scores.

    Args:
        poses: ``(M, K, 3)`` (x, y, joint score).
        links: L 0-based joint pairs in DEKR's order (``bapose.checkpoints.convert.DEKR_LINKS``).
        torso: indices into ``links`` of the two links that normalise.

    Returns:
        float32 ``(M, 3L + K)``: ``[dx_1, dy_1, dx_2, dy_2, ..., dx_L, dy_L, len_1..len_L, score_1..score_K]``.
    """
    p = torch.as_tensor(poses).float()
    if p.dim() != 3 or p.shape[-1] != 3:
        raise DataError(f"rescore: field 'poses' has shape {tuple(p.shape)}; expected (M, K, 3)")
    k = p.shape[1]
    sk = _as_skeleton(links)
    if any(not (0 <= a < k and 0 <= b < k) for a, b in sk) or any(not 0 <= t < len(sk) for t in torso):
        raise DataError(f"rescore: links {list(sk)} / torso {list(torso)} out of range for poses with K={k}")
    a = torch.tensor([s[0] for s in sk], dtype=torch.long, device=p.device)
    b = torch.tensor([s[1] for s in sk], dtype=torch.long, device=p.device)
    rel = p[:, a, :2] - p[:, b, :2]  # (M, L, 2)
    length = rel.norm(dim=-1)  # (M, L)
    norm = ((length[:, torso[0]] + length[:, torso[1]]) / 2).clamp(min=min_torso)[:, None]  # (M, 1)
    return torch.cat([(rel / norm[..., None]).reshape(len(p), -1), length / norm, p[..., 2]], 1)


FEATURES = ("bapose", "dekr")
OUTPUTS = ("sigmoid", "linear")


class RescoreNet(nn.Module):
    """Pose features ``(M, F)`` -> predicted OKS ``(M,)`` (Linear-ReLU-Linear-ReLU-Linear, then a sigmoid).

    Args:
        in_features: F, from :func:`num_features`.
        hidden: width of both hidden layers (DEKR uses 256).
        skeleton: the link set the features were built with, kept with the weights so the codec needs no meta.
        num_keypoints: K the features were built with.
        features: ``"bapose"`` (:func:`pose_features`) or ``"dekr"`` (:func:`dekr_pose_features` over ``skeleton``
            with ``torso``).
        torso: ``features="dekr"``: the two links whose mean length normalises.
        output: ``"sigmoid"`` (in [0, 1]) or ``"linear"`` (DEKR's PredictOKSNet: the last layer as it is).
    """

    def __init__(self, in_features: int, hidden: int = 256, skeleton: Sequence[Sequence[int]] = (),
                 num_keypoints: int | None = None, features: str = "bapose", torso: Sequence[int] = (),
                 output: str = "sigmoid") -> None:
        super().__init__()
        if features not in FEATURES or output not in OUTPUTS:
            raise DataError(f"rescore: fields 'features' {features!r} / 'output' {output!r}; expected one of "
                            f"{FEATURES} / {OUTPUTS}")
        if features == "dekr" and len(torso) != 2:
            raise DataError(f"rescore: features 'dekr' need two 'torso' links, got {list(torso)}")
        self.in_features = int(in_features)
        self.hidden = int(hidden)
        self.skeleton = _as_skeleton(skeleton)
        self.num_keypoints = num_keypoints
        self.features, self.torso, self.output = features, tuple(int(t) for t in torso), output
        self.layers = nn.Sequential(nn.Linear(self.in_features, self.hidden), nn.ReLU(inplace=True),
                                    nn.Linear(self.hidden, self.hidden), nn.ReLU(inplace=True),
                                    nn.Linear(self.hidden, 1))

    def forward(self, features: Tensor) -> Tensor:
        out = self.layers(features).squeeze(-1)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def pose_features(self, poses: Tensor) -> Tensor:
        """This net's features of ``poses (M, K, 3)``."""
        if self.features == "dekr":
            return dekr_pose_features(poses, self.skeleton, self.torso)
        return pose_features(poses, self.skeleton)

    def predict_oks(self, poses: Tensor) -> Tensor:
        """``poses (M, K, 3)`` -> predicted OKS ``(M,)`` on ``poses``' device, with this net's skeleton."""
        if self.num_keypoints is not None and poses.shape[1] != self.num_keypoints:
            raise DataError(f"rescore: net trained on K={self.num_keypoints} joints, poses have K={poses.shape[1]}")
        with torch.no_grad():
            out = self(self.pose_features(poses).to(next(self.parameters()).device)).to(poses.device)
        # DEKR sets a NaN prediction to 0 before multiplying it with the pose score
        return torch.nan_to_num(out, nan=0.0) if self.features == "dekr" else out


def train_rescore(features: Tensor | np.ndarray, targets: Tensor | np.ndarray, epochs: int = 200, lr: float = 1e-3,
                  hidden: int = 256, batch_size: int = 1024, weight_decay: float = 0.0, seed: int = 0,
                  skeleton: Sequence[Sequence[int]] = (), num_keypoints: int | None = None) -> RescoreNet:
    """Fit a :class:`RescoreNet` to OKS targets with MSE (Adam, shuffled mini-batches; full batch when M is small).

    Args:
        features: ``(M, F)`` from :func:`pose_features`; targets: ``(M,)`` OKS in [0, 1].
        epochs: passes over the data (with M <= batch_size one epoch is one step).
        seed: seeds initialisation and shuffling without touching the global RNG.
        skeleton / num_keypoints: stored on the net for :func:`save_rescore` and the codec.
    """
    x = torch.as_tensor(features).float()
    y = torch.as_tensor(targets).float().reshape(-1)
    if x.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise DataError(f"rescore: features {tuple(x.shape)} and targets {tuple(y.shape)}; expected (M, F) and (M,), "
                        "M > 0")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RescoreNet(x.shape[1], hidden, skeleton=skeleton, num_keypoints=num_keypoints)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        m = x.shape[0]
        net.train()
        for _ in range(int(epochs)):
            order = torch.randperm(m)
            for start in range(0, m, batch_size):
                idx = order[start:start + batch_size]
                loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval()


# ---------------------------------------------------------------------------------------------------- OKS targets
def oks(pred_poses: np.ndarray, gt_poses: np.ndarray, gt_areas: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """OKS of each prediction with its best-matching ground-truth person of the same image (COCO's formula).

    ``OKS = mean over labelled GT joints of exp(-d^2 / (2 * area * (2 sigma)^2))``, as pycocotools' ``computeOks``
    (:func:`bapose.codecs.oks.oks_matrix`); GT people without labelled joints match nothing (COCO ignores them for
    keypoints).

    Args:
        pred_poses: ``(M, K, 2|3)``; gt_poses: ``(N, K, 3)`` (x, y, v); gt_areas: ``(N,)`` OKS scale (COCO ``area``;
            CrowdPose uses bbox ``w * h * 0.53``); sigmas: ``(K,)``.

    Returns:
        ``(M,)`` float64, 0 where the image has no usable GT.
    """
    pred = np.asarray(pred_poses, dtype=np.float64)
    sig = np.asarray(sigmas, dtype=np.float64)
    gt = np.asarray(gt_poses, dtype=np.float64)
    gt = gt.reshape(0, len(sig), 3) if gt.size == 0 else gt
    area = np.asarray(gt_areas, dtype=np.float64).reshape(-1)
    if pred.ndim != 3 or pred.shape[1] != len(sig) or gt.ndim != 3 or gt.shape[1:] != (len(sig), 3) \
            or area.shape[0] != gt.shape[0]:
        raise DataError(f"rescore: oks got predictions {pred.shape}, GT {gt.shape}, areas {area.shape}, "
                        f"{len(sig)} sigmas; expected (M, K, 3), (N, K, 3), (N,), K")
    if pred.shape[0] == 0 or not (gt[..., 2] > 0).any():
        return np.zeros(pred.shape[0])
    return oks_matrix(pred, gt, area, sig, labelled=gt[..., 2] > 0).max(1)


def training_set(gt: str | Path | Mapping[str, Any], results: str | Path | Sequence[Mapping[str, Any]],
                 sigmas: Sequence[float], skeleton: Sequence[Sequence[int]], mode: str = "coco",
                 ) -> tuple[Tensor, Tensor, Tensor, np.ndarray]:
    """Features, OKS targets and raw scores of every prediction in a COCO results list.

    Args:
        gt: COCO keypoint json (path or dict); crowd people and people without labelled joints are not targets.
        results: COCO results (path or list of ``{"image_id", "keypoints": 3K, "score"}``) as bapose-eval writes.
        mode: ``"coco"`` (OKS scale = ``area``) or ``"crowdpose"`` (bbox ``w * h * 0.53``).

    Returns:
        ``features (M, F)``, ``targets (M,)`` OKS, ``scores (M,)`` raw result scores, ``image_ids (M,)``.
    """
    gt_name = str(gt) if not isinstance(gt, Mapping) else "<gt dict>"
    res_name = str(results) if isinstance(results, (str, Path)) else "<results list>"
    if not isinstance(gt, Mapping):
        gt = read_json(gt)
    if isinstance(results, (str, Path)):
        results = read_json(results, expected="a json list of results")
    if mode not in ("coco", "crowdpose"):
        raise DataError(f"rescore: mode '{mode}'; expected 'coco' or 'crowdpose'")
    k = len(sigmas)
    people: dict[Any, list[tuple[np.ndarray, float]]] = defaultdict(list)
    for ann in gt.get("annotations", []):
        kp = np.asarray(ann.get("keypoints", []), dtype=np.float64)
        if ann.get("iscrowd", 0) or kp.size != 3 * k:
            continue
        people[ann["image_id"]].append((kp.reshape(k, 3), gt_oks_scale(ann, mode)))
    preds: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        if len(r.get("keypoints", [])) != 3 * k:
            raise DataError(f"file '{res_name}': result {i} field 'keypoints' has {len(r.get('keypoints', []))} "
                            f"values; expected 3K = {3 * k}")
        preds[r["image_id"]].append(i)
    if not preds:
        raise DataError(f"file '{res_name}': no results; expected a COCO results list")
    poses = np.asarray([r["keypoints"] for r in results], dtype=np.float64).reshape(-1, k, 3)
    targets = np.zeros(len(results))
    for image_id, idx in preds.items():  # a loop over images; OKS is vectorised within each
        gts = people.get(image_id, [])
        if not gts:
            continue
        targets[idx] = oks(poses[idx], np.stack([g for g, _ in gts]), np.asarray([a for _, a in gts]), sigmas)
    if not set(preds) & set(people):
        raise DataError(f"file '{res_name}': no image_id matches a person of '{gt_name}'; expected results on that "
                        "ground truth")
    scores = torch.tensor([float(r["score"]) for r in results])
    ids = np.asarray([r["image_id"] for r in results])
    return pose_features(poses, skeleton), torch.from_numpy(targets).float(), scores, ids


def pearson(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Pearson correlation of two ``(M,)`` vectors (0 when either is constant)."""
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- files
def save_rescore(net: RescoreNet, path: str | Path) -> None:
    """Write weights + the feature definition (``in_features``, ``hidden``, ``skeleton``, ``num_keypoints``;
    ``features``, ``torso``, ``output`` when they are not the defaults)."""
    blob = {"state_dict": net.state_dict(), "in_features": net.in_features, "hidden": net.hidden,
            "skeleton": [list(p) for p in net.skeleton], "num_keypoints": net.num_keypoints}
    if (net.features, net.output) != ("bapose", "sigmoid"):
        blob.update(features=net.features, torso=list(net.torso), output=net.output)
    torch.save(blob, str(path))


def load_rescore(path: str | Path, num_keypoints: int | None = None,
                 skeleton: Sequence[Sequence[int]] | None = None) -> RescoreNet:
    """Read a :func:`save_rescore` file (``weights_only``: no pickled code runs), in eval mode on the CPU.

    Args:
        num_keypoints / skeleton: when given, the file must have been trained for them; a mismatch raises
            :class:`DataError` naming the file, the field, and both values.
    """
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise DataError(f"rescore file '{path}' does not exist") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for truncated / foreign files
        raise DataError(f"rescore file '{path}' is unreadable ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "expected a file written by scripts/train_rescore.py") from e
    missing = [f for f in ("state_dict", "in_features", "hidden", "skeleton")
               if not isinstance(blob, dict) or f not in blob]
    if missing:
        raise DataError(f"rescore file '{path}': missing field(s) {missing}; expected a file written by "
                        "scripts/train_rescore.py")
    file_sk = _as_skeleton(blob["skeleton"])
    in_features, hidden = int(blob["in_features"]), int(blob["hidden"])
    k = blob.get("num_keypoints")
    k = int(k) if k is not None else in_features - 3 * len(file_sk)
    if num_features(k, file_sk) != in_features:
        raise DataError(f"rescore file '{path}': field 'in_features' is {in_features}; expected 3 * {len(file_sk)} "
                        f"links + {k} joints = {num_features(k, file_sk)}")
    if num_keypoints is not None and int(num_keypoints) != k:
        raise DataError(f"rescore file '{path}': field 'num_keypoints' is {k}; expected {int(num_keypoints)} "
                        "(the network's joints)")
    if skeleton is not None and _as_skeleton(skeleton) != file_sk:
        want = _as_skeleton(skeleton)
        raise DataError(f"rescore file '{path}': field 'skeleton' differs; links only in the file "
                        f"{sorted(set(file_sk) - set(want))}, only expected {sorted(set(want) - set(file_sk))}"
                        + ("" if set(want) != set(file_sk) else " (same links, another order)"))
    try:
        net = RescoreNet(in_features, hidden, skeleton=file_sk, num_keypoints=k,
                         features=str(blob.get("features", "bapose")), torso=tuple(blob.get("torso", ())),
                         output=str(blob.get("output", "sigmoid")))
    except DataError as e:
        raise DataError(f"rescore file '{path}': {e}") from None
    try:
        net.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as e:
        raise DataError(f"rescore file '{path}': field 'state_dict' does not fit in_features={in_features}, "
                        f"hidden={hidden} ({str(e).splitlines()[0]})") from e
    return net.eval()
