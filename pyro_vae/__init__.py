"""pyro_vae: the toolkit shared by models and inference.

Data, networks, device choice, checkpoints, figures and configuration. This
package imports neither ``models`` nor ``inference`` (dependencies point one
way: inference -> models -> pyro_vae).
"""
