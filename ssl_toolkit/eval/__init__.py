"""Evaluation of frozen encoders: feature extraction, linear probe, kNN, metrics."""
