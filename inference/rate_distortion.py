"""Kept import path: the estimator lives in `inference.estimators.rate_distortion`."""

from inference.estimators.rate_distortion import (
    rate_distortion, RateDistortion,
)

__all__ = ["rate_distortion", "RateDistortion"]
