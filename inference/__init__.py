"""Inference: SVI training (``inference.svi``) and, later, estimators of log p(x)."""
