"""Kept import path: the estimator lives in `inference.estimators.ais`."""

from inference.estimators.ais import (
    ADAPT_RATE, AIS_COMPILE_RTOL, INITS, PILOT_ADAPT_RATE, PILOT_FRACTION, PILOT_MIN_STEPS, SCHEDULES,
    SIGMOID_SHARPNESS, TARGET_ACCEPT, TUNINGS, WARMUP_ADAPT_RATE, WARMUP_TRANSITIONS, ais_log_marginal,
    AISEstimate, annealing_schedule, bdmc, dequantized_ais, pilot_steps, Sandwich, simulate,
)

__all__ = ["ADAPT_RATE", "AIS_COMPILE_RTOL", "INITS", "PILOT_ADAPT_RATE", "PILOT_FRACTION", "PILOT_MIN_STEPS",
           "SCHEDULES", "SIGMOID_SHARPNESS", "TARGET_ACCEPT", "TUNINGS", "WARMUP_ADAPT_RATE", "WARMUP_TRANSITIONS",
           "ais_log_marginal", "AISEstimate", "annealing_schedule", "bdmc", "dequantized_ais", "pilot_steps",
           "Sandwich", "simulate"]
