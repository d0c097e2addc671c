"""Inference: training a model by SVI, and judging it by estimates of log p(x).

Training (``python -m inference.svi``): `svi` (the loop and its CLI), `run_start` (a run's checked settings,
data, model and optimiser, fresh or resumed), `objectives` (the ELBO family and the IWAE bound by name),
`step` (one optimiser step), `compiled` (the JIT loss and its check), `cuda_graph` (the step captured in a CUDA
graph), `data_parallel` (one global batch over ``torchrun`` processes), `stopping` (Ctrl-C and SIGTERM between
steps), `rate_distortion` (the ELBO split into rate and distortion).

Estimating log p(x): `importance` (importance sampling from the guide: log p-hat(x), the IWAE ladder, ESS,
PSIS k-hat), `gaps` (approximation and amortisation gaps), `ais` (annealed importance sampling and the BDMC
sandwich), `evaluate` (the report, ``python -m inference.evaluate``), `compare` (paired per-image differences
of reports on the same images, ``python -m inference.compare``) and `figures` (pictures of a trained model,
``python -m inference.figures``).
"""
