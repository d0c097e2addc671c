"""pyro_vae: the toolkit shared by models and inference.

Data, networks, device choice, checkpoints, figures, configuration and
command-line conventions. This package imports neither ``models`` nor
``inference`` when it loads (dependencies point one way: inference -> models
-> pyro_vae). The one reach back is `pyro_vae.checkpoint`, which asks the
model registry (``models.registry``) for a class by name when it builds or
saves a model: the registry is where model families register themselves.
"""
