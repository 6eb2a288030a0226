"""Classification metrics as METAGENE-1's classifier reports them (scikit-learn).

accuracy, macro-F1 (the model-selection metric), MCC, AUROC (one-vs-rest,
macro, only for 2..10 classes and only when every class occurs in the labels),
per-class precision/recall/F1 and the row-normalised confusion matrix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MAX_AUROC_CLASSES = 10


def classification_scores(labels: Sequence[int], probabilities: np.ndarray, class_names: Sequence[str]) -> dict:
    """Scalars (accuracy, macro_f1, mcc, auroc when defined) plus 'per_class' and 'confusion_matrix'."""
    from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, matthews_corrcoef,
                                 precision_recall_fscore_support, roc_auc_score)

    y = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    n_classes = len(class_names)
    if probs.ndim != 2 or probs.shape != (len(y), n_classes):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(y)} labels and {n_classes} classes")
    pred = probs.argmax(axis=1)
    every = list(range(n_classes))
    scores: dict = {
        "accuracy": float(accuracy_score(y, pred)) if len(y) else 0.0,
        "macro_f1": float(f1_score(y, pred, labels=every, average="macro", zero_division=0)) if len(y) else 0.0,
        "mcc": float(matthews_corrcoef(y, pred)) if len(y) else 0.0,
    }
    present = set(y.tolist())
    if 2 <= n_classes <= MAX_AUROC_CLASSES and present == set(every):
        if n_classes == 2:
            scores["auroc"] = float(roc_auc_score(y, probs[:, 1]))
        else:
            scores["auroc"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=every))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=every, zero_division=0)
    scores["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }
    matrix = confusion_matrix(y, pred, labels=every).astype(np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    scores["confusion_matrix"] = {
        "labels": list(class_names),
        "counts": matrix.astype(int).tolist(),
        "normalized": np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0).round(6).tolist(),
    }
    return scores


def scalar_scores(scores: dict) -> dict[str, float]:
    """Only the numbers a metrics exporter takes (drops per_class and the confusion matrix)."""
    return {k: v for k, v in scores.items() if isinstance(v, (int, float))}
