"""Kept import path: the estimator lives in `inference.estimators.importance`."""

from inference.estimators.importance import (
    DATA_PLATE, DEFAULT_LADDER, DRAW_BLOCK, data_frame_dim, dequantized_log_weights_chunk, estimate_log_marginal,
    inspect_programs, Layout, log_weights_chunk, MarginalEstimate, pareto_khat, psis_khat_function, sample_sites,
    sum_within_datapoint, trace_sum,
)

__all__ = ["DATA_PLATE", "DEFAULT_LADDER", "DRAW_BLOCK", "data_frame_dim", "dequantized_log_weights_chunk",
           "estimate_log_marginal", "inspect_programs", "Layout", "log_weights_chunk", "MarginalEstimate",
           "pareto_khat", "psis_khat_function", "sample_sites", "sum_within_datapoint", "trace_sum"]
