"""Inference: training a model by SVI, and judging it by estimates of log p(x). Three concerns, one sub-package
each, and the four command lines above them:

- `inference.training`: `train` and what it is made of (the loop, run start, objectives, the compiled and graphed
  step, data parallelism);
- `inference.estimators`: log p(x) by importance sampling and AIS, the gaps, rate and distortion, active units;
- `inference.reports`: the report, the figures and the comparison of reports, built on the estimators.

Commands: ``python -m inference.svi`` (training), ``inference.evaluate`` (the report), ``inference.figures``,
``inference.compare``. Each only parses its flags, calls the library and prints (`pyro_vae.cli.run_command`).
Kept import paths: ``inference.svi.train``, ``inference.evaluate.evaluate``, ``inference.figures.*`` and the
estimator modules ``inference.importance``, ``inference.ais``, ``inference.rate_distortion``.
"""
