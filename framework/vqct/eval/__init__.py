"""Evaluation: reconstruction quality and codebook statistics."""
