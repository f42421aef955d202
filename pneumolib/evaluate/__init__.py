"""Evaluation (notebook 04): metrics with CIs, a run's evaluation, comparisons, the model card,
and scoring new files (predict)."""
