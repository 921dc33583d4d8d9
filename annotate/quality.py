"""Quality of one clip's annotations against its ground truth (the synthetic world's gt file).

Objects are matched to ground-truth objects by phrase (the synthetic caption names each object by its phrase;
a phrase that contains a ground-truth phrase matches it). Figures per clip, averaged over clips by the job:
- ground_recall: share of GT objects whose predicted box at its grounding frame has IoU >= 0.5 with the GT box;
- box_iou / mask_iou: mean over matched objects at the grounding frame;
- delta_avg / oa / aj: TAP-Vid on the tracking frames, queries at each object's grounding frame, all its points
  pooled ("strided": every frame but the query frame is scored).
Predictions are scaled to source pixels first (boxes, masks and points from the grounding frames, tracks from the
tracking frames), so the figures are at the video's own size.
"""

from __future__ import annotations

import numpy as np

from annotate.config import AnnotateConfig
from annotate.item import ClipItem
from annotate.metrics import box_iou, mask_iou, tapvid_metrics


def _match(phrase: str, gt_phrases: list[str]) -> int:
    p = phrase.lower()
    hits = [i for i, g in enumerate(gt_phrases) if g.lower() in p or p in g.lower()]
    return min(hits, key=lambda i: abs(len(gt_phrases[i]) - len(p))) if hits else -1


def clip_quality(item: ClipItem, cfg: AnnotateConfig) -> dict[str, float]:
    import cv2

    from annotate.synthetic import GroundTruth

    gt = GroundTruth.load(item.gt)
    clip = item.clip
    (w, h), (gw, gh) = clip.size, clip.ground_size
    to_src = np.array([clip.info.width / gw, clip.info.height / gh] * 2)  # grounding -> source pixels
    track_to_src = np.array([clip.info.width / w, clip.info.height / h])  # tracking -> source pixels
    gt_phrases = list(gt.phrases)
    found = np.zeros(len(gt_phrases), bool)
    box_ious, mask_ious = [], []
    pred_tr, pred_vis, gt_tr, gt_vis, queries = [], [], [], [], []
    for i, g in enumerate(item.groundings):
        j = _match(item.phrases[g.phrase_index].text, gt_phrases)
        if j < 0:
            continue
        f = int(g.source_frame)
        gt_box = gt.boxes[j, f]
        if np.all(np.isfinite(gt_box)):
            iou = float(box_iou(np.asarray(g.box, float)[None] * to_src, gt_box[None])[0, 0])
            box_ious.append(iou)
            found[j] |= iou >= 0.5
        if i < len(item.masks):
            pred_mask = cv2.resize(item.masks[i].astype(np.uint8), (clip.info.width, clip.info.height),
                                   interpolation=cv2.INTER_NEAREST).astype(bool)
            mask_ious.append(float(mask_iou(pred_mask, gt.mask(j, f))))
        if item.tracks is None:
            continue
        pts_src = item.points[i] * to_src[:2]
        pos, vis = gt.track_points(j, f, pts_src)  # (K, n_frames, 2), (K, n_frames) at every source frame
        idx = clip.track_indices
        gt_tr.append(pos[:, idx])
        gt_vis.append(vis[:, idx])
        pred_tr.append(item.tracks[i] * track_to_src)
        pred_vis.append(item.track_vis[i])
        queries.append(np.full(len(pts_src), g.track_frame))
    out = {
        "ground_recall": float(found.mean()) if len(found) else float("nan"),
        "box_iou": float(np.mean(box_ious)) if box_ious else float("nan"),
        "mask_iou": float(np.mean(mask_ious)) if mask_ious else float("nan"),
    }
    if pred_tr:
        m = tapvid_metrics(np.concatenate(pred_tr), np.concatenate(pred_vis), np.concatenate(gt_tr),
                           np.concatenate(gt_vis), np.concatenate(queries), size=(clip.info.width, clip.info.height))
        out.update(delta_avg=m["delta_avg"], oa=m["oa"], aj=m["aj"])
    return out
