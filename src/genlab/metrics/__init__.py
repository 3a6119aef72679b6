"""Evaluation metrics: likelihood bounds, sample quality from a small digit classifier, inpainting, anomalies."""
