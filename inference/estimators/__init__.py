"""Estimators of log p(x) and of what a latent code holds, for any model/guide pair of the contract
(`models.base`): `importance` (importance sampling from the guide: log p-hat(x), the IWAE ladder, ESS, PSIS
k-hat), `ais` (annealed importance sampling and the BDMC sandwich), `gaps` (approximation and amortisation gaps),
`rate_distortion` (the ELBO split into rate and distortion), `active_units` (Burda et al.'s activity, posterior
collapse), `predictive` (reconstructions and draws), `units` (nats per image, bits per dimension). They import
nothing from training or the reports.
"""
