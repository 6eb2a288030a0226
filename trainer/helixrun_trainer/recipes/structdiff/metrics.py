"""Scores of generated peptides, as the reference's structdiff/metrics/ defines them.

- validity: share of peptides made only of the 20 standard residues (a decoder that emits a special
  token, X/B/U/Z/O or nothing makes its peptide invalid; the reference's validity_score).
- uniqueness: distinct peptides / peptides (unique_ratio).
- diversity: mean pairwise Levenshtein distance, each divided by the longer length (avg_edit_distance).
- novelty: share of peptides not in the training set (exact_novelty).
- training_similarity: mean over peptides of 1 - that normalised distance to the nearest training
  peptide (nn_similarity_mean): how close generation stays to the data it learned.
"""

from __future__ import annotations

from typing import Sequence

STANDARD = frozenset("ACDEFGHIKLMNPQRSTVWY")


def peptide_scores(generated: Sequence[str], training: Sequence[str]) -> dict[str, float]:
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    if not generated:
        raise ValueError("no generated peptides to score")
    n, known = len(generated), set(training)
    scores = {
        "validity": sum(bool(p) and set(p) <= STANDARD for p in generated) / n,
        "uniqueness": len(set(generated)) / n,
        "novelty": sum(p not in known for p in generated) / n,
    }
    pairwise = cdist(generated, generated, scorer=Levenshtein.normalized_distance, workers=-1)
    scores["diversity"] = float(pairwise.sum() / (n * (n - 1))) if n > 1 else 0.0
    nearest = cdist(generated, list(training), scorer=Levenshtein.normalized_distance, workers=-1).min(axis=1)
    scores["training_similarity"] = float(1.0 - nearest.mean())
    return scores
