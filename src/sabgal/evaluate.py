"""Scoring predictions against ground truth (benchmarks and regression tests).

Cells are matched one-to-one by intersection over union >= 0.5 (at that
level a match is necessarily unique). Detection F1 counts matched cells;
positive-call F1 counts true SA-β-gal positive cells that were matched *and*
called positive, against every predicted positive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["Matching", "match_labels", "score_image", "aggregate_scores"]


@dataclass(frozen=True)
class Matching:
    """One-to-one matches between true and predicted labels."""

    true_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int

    @property
    def tp(self) -> int:
        return int(self.true_ids.size)

    @property
    def f1(self) -> float:
        denom = self.n_true + self.n_pred
        return 2 * self.tp / denom if denom else 1.0


def match_labels(true: np.ndarray, pred: np.ndarray, *, iou_threshold: float = 0.5) -> Matching:
    """Match labels by IoU (threshold >= 0.5 makes matches unique).

    A pair counts at IoU >= ``iou_threshold``: below, label 2 and label 4
    overlap at exactly 0.5 and match; at 0.6 only 1 and 3 do.

    >>> t = np.array([[1, 1, 0, 2, 2]])
    >>> p = np.array([[3, 3, 0, 0, 4]])
    >>> m = match_labels(t, p)
    >>> m.tp, m.n_true, m.n_pred
    (2, 2, 2)
    >>> match_labels(t, p, iou_threshold=0.6).tp
    1
    """
    if iou_threshold < 0.5:
        raise ValueError("iou_threshold must be >= 0.5 for one-to-one matching")
    t = np.asarray(true, dtype=np.int64).ravel()
    p = np.asarray(pred, dtype=np.int64).ravel()
    t_ids, t_inv = np.unique(t, return_inverse=True)
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_area = np.bincount(t_inv)
    p_area = np.bincount(p_inv)
    both = (t > 0) & (p > 0)
    pair = t_inv[both] * p_ids.size + p_inv[both]
    keys, inter = np.unique(pair, return_counts=True)
    ti, pi = keys // p_ids.size, keys % p_ids.size
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    ok = iou >= iou_threshold
    return Matching(t_ids[ti[ok]], p_ids[pi[ok]], iou[ok],
                    int((t_ids > 0).sum()), int((p_ids > 0).sum()))


def score_image(true_labels: np.ndarray, truth: pd.DataFrame, pred_labels: np.ndarray,
                cells: pd.DataFrame) -> dict[str, float]:
    """Per-image scores: counts, fractions, detection and positive-call counts.

    truth: one row per true cell with ``cell_id`` and ``sabgal_positive``.
    cells: predicted cells with ``cell_id`` and ``sabgal_positive``.
    """
    m = match_labels(true_labels, pred_labels)
    true_pos = set(truth.loc[truth["sabgal_positive"].astype(bool), "cell_id"].astype(int))
    pred_pos = set(cells.loc[cells["sabgal_positive"].astype(bool), "cell_id"].astype(int))
    pos_tp = sum(1 for ti, pi in zip(m.true_ids, m.pred_ids) if ti in true_pos and pi in pred_pos)
    n_true, n_pred = len(truth), len(cells)
    frac_true = len(true_pos) / n_true if n_true else float("nan")
    frac_pred = len(pred_pos) / n_pred if n_pred else float("nan")
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "count_abs_pct_error": abs(n_pred - n_true) / n_true * 100 if n_true else float("nan"),
        "fraction_positive_true": frac_true,
        "fraction_positive_pred": frac_pred,
        "fraction_positive_abs_error_pp": abs(frac_pred - frac_true) * 100,
        "det_tp": m.tp,
        "det_f1": m.f1,
        "pos_tp": pos_tp,
        "pos_n_true": len(true_pos),
        "pos_n_pred": len(pred_pos),
        "mean_matched_iou": float(m.iou.mean()) if m.tp else float("nan"),
    }


@dataclass(frozen=True)
class Aggregate:
    n_images: int
    fraction_positive_mae_pp: float
    fraction_positive_max_pp: float
    count_mape_pct: float
    detection_f1: float
    positive_f1: float


def aggregate_scores(scores: pd.DataFrame) -> dict[str, float]:
    """Pool per-image scores: mean/max fraction error, mean count error, micro F1s."""
    det_denom = scores["n_true"].sum() + scores["n_pred"].sum()
    pos_denom = scores["pos_n_true"].sum() + scores["pos_n_pred"].sum()
    agg = Aggregate(
        n_images=int(len(scores)),
        fraction_positive_mae_pp=float(scores["fraction_positive_abs_error_pp"].mean()),
        fraction_positive_max_pp=float(scores["fraction_positive_abs_error_pp"].max()),
        count_mape_pct=float(scores["count_abs_pct_error"].mean()),
        detection_f1=float(2 * scores["det_tp"].sum() / det_denom) if det_denom else 1.0,
        positive_f1=float(2 * scores["pos_tp"].sum() / pos_denom) if pos_denom else 1.0,
    )
    return asdict(agg)
