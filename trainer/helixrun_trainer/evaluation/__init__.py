"""Evaluation metrics the recipes report: text generation (BLEU, METEOR) and classification."""
