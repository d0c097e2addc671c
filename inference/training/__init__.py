"""Training a model by SVI: `train` (``python -m inference.svi`` calls it).

`loop` (the epochs: steps, checkpoints, per-epoch metrics, stopping), `run_start` (a run's checked settings,
data, model and optimiser, fresh or resumed), `objectives` (the ELBO family and the IWAE bound by name), `step`
(one optimiser step), `compiled` (the JIT loss and its check), `cuda_graph` (the step captured in a CUDA graph),
`data_parallel` (one global batch over ``torchrun`` processes). Training uses the estimators
(`inference.estimators`) for its per-epoch metrics and draws the run's figures (`inference.reports.figures`); it
never imports the report (`inference.reports.report`).
"""

from inference.training.loop import TrainResult, resume_command, train

__all__ = ["TrainResult", "resume_command", "train"]
