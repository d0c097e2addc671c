r"""Training objectives and their gradient estimators, by name (``--elbo``, ``--gradient``).

Objectives, all lower bounds on log p(x) in nats, summed over the batch:

- ``trace``: Pyro's ``Trace_ELBO``, E_q[log p(x, z) - log q(z|x)] by reparameterised samples;
- ``meanfield``: ``TraceMeanField_ELBO``, the same ELBO with KL(q || p) in closed form where it
  exists (a ``Trace_ELBO`` subclass);
- ``iwae``: E[log (1/k) sum_j w_j], w_j = p(x, z_j) / q(z_j|x) (``RenyiELBO(alpha=0)``; Burda et al. 2015).

Gradient estimators of the same objectives (the same expectation, other variance):

- ``standard``: autograd of the reparameterised estimate. For the encoder phi it holds a
  *score* term, d/dphi log q_phi(z) at fixed z, whose expectation is 0 but whose noise stays
  even when q equals the posterior.
- ``stl`` (``trace``): sticking the landing (Roeder, Wu & Duvenaud 2017) drops that term and
  keeps the path derivative, d/dz [log p(x, z) - log q_phi(z|x)] dz/dphi: unbiased, and of zero
  variance when q is the exact posterior.
- ``dreg`` (``iwae``): doubly reparameterised gradients (Tucker, Lawson, Gu & Maddison 2019). With
  normalised weights w~_j = w_j / sum_i w_i, the decoder theta gets sum_j w~_j d/dtheta log w_j (the
  usual IWAE gradient) and the encoder sum_j w~_j^2 d/dz_j log w_j dz_j/dphi (path only), which
  does not fade as k grows the way the IWAE encoder's signal does.

How the surrogates are built, without re-deriving densities: Pyro's traces give log q_phi(z) with
z = z(phi, eps) from ``rsample``, so autograd yields path + score. Adding
log q_phi(stop_grad(z)) - its value (zero in value) adds the score term back with the opposite
sign, leaving the path term. For DReG a backward hook on each latent value multiplies the
gradient reaching z_j by w~_j, so the encoder path gets w~_j^2 while the decoder keeps w~_j.
"""

from __future__ import annotations

import math

import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.distributions import TransformedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_identically_zero
from pyro.poutine.util import site_is_subsample
from pyro.util import warn_if_nan

from inference.compiled import CompiledSurrogate, JitTraceELBO, JitTraceMeanFieldELBO
from pyro_vae.errors import ConfigError

ELBO_NAMES = ("trace", "meanfield", "iwae")
GRADIENTS = ("standard", "stl", "dreg")


def _latent_sites(trace) -> list[dict]:
    return [site for site in trace.nodes.values()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def _score_cancelling(site: dict) -> torch.Tensor:
    """log q_phi(stop_grad(z)) minus its value, per element: zero, with the *score* term's gradient.

    Added to the ELBO surrogate, it cancels the score term that autograd puts into -log q_phi(z).
    Scale (``poutine.scale``) and mask as Pyro applies them to the site's own log-density.
    """
    _, score_function_term, _ = site["score_parts"]
    if not is_identically_zero(score_function_term):
        raise ConfigError(f"--gradient stl/dreg need a reparameterised guide; site {site['name']!r} is not")
    log_prob = scale_and_mask(site["fn"].log_prob(site["value"].detach()), site["scale"], site["mask"])
    return log_prob - log_prob.detach()


class TraceSTL_ELBO(Trace_ELBO):
    """``Trace_ELBO`` with the sticking-the-landing gradient: the score term of log q dropped (module doc).

    Same loss value and expectation as ``Trace_ELBO``; only the encoder's
    gradient changes. Its ``loss_and_surrogate_loss`` returns tensors, so the
    JIT-compiled `JitTraceSTL_ELBO` is the same code traced.
    """

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
            elbo = elbo - sum(site["log_prob_sum"] for site in _latent_sites(guide_trace))
            cancel = sum(_score_cancelling(site).sum() for site in _latent_sites(guide_trace))
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - (elbo + cancel) / self.num_particles
        return loss, surrogate

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        loss = loss.detach()  # a hook on the compiled graph's unused output would be called with None
        warn_if_nan(loss, "loss")
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """For ``pyro.infer.SVI``: the same STL gradient (Trace_ELBO's own would be the standard one)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


class JitTraceSTL_ELBO(CompiledSurrogate, TraceSTL_ELBO):
    """`TraceSTL_ELBO` JIT-compiled (checked against it by `inference.compiled.check_compiled`)."""


class IWAE_DReG(Trace_ELBO):
    """The IWAE bound with doubly reparameterised gradients (module doc); its value equals ``RenyiELBO(alpha=0)``'s.

    Needs every sample site inside the datapoints' plate (``max_plate_nesting=1``)
    and a reparameterised guide. ``num_particles`` is k; particles are always
    vectorised. Eager only: the weight hook is not something tracing records.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, **kwargs):
        if num_particles < 2:
            raise ConfigError("--gradient dreg needs --num-particles of at least 2 (with one particle it is "
                              "--elbo trace --gradient stl)")
        kwargs["vectorize_particles"] = True
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, **kwargs)

    def _log_weights(self, model, guide, args, kwargs) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
        """``(log w [k, B], score-cancelling terms [k, B], guide latent sites)`` from one vectorised trace."""
        (model_trace, guide_trace), = self._get_traces(model, guide, args, kwargs)
        model_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]
        latents = _latent_sites(guide_trace)
        for site in latents:
            fn = getattr(site["fn"], "base_dist", site["fn"])
            if isinstance(site["fn"], TransformedDistribution) or isinstance(fn, TransformedDistribution):
                # a flow caches z -> base sample, so log q would skip the hook on z: the encoder would get w~, not w~^2
                raise ConfigError("--gradient dreg does not support flow guides (--guide iaf); use --guide diagonal or full")
        if len(latents) != 1:  # a latent that depends on another would get both hooks' factors
            raise ConfigError("--gradient dreg supports one latent site; this guide has "
                              f"{', '.join(s['name'] for s in latents)}")
        shape = (self.num_particles, len(args[0]))
        sites = [*model_sites, *latents]
        if any(tuple(s["log_prob"].shape) != shape for s in sites):
            raise ConfigError(f"--gradient dreg needs every sample site in the datapoints' plate; log-densities have "
                              f"shapes {[list(s['log_prob'].shape) for s in sites]}, not {list(shape)}")
        log_w = sum(s["log_prob"] for s in model_sites) - sum(s["log_prob"] for s in latents)
        cancel = sum(_score_cancelling(s) for s in latents)
        return log_w, cancel, latents

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w, cancel, latents = self._log_weights(model, guide, args, kwargs)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # [B]
        weights = torch.softmax(log_w.detach(), dim=0)  # w~ [k, B]
        for site in latents:
            value = site["value"]
            if value.requires_grad:  # the encoder's path: w~ more, so w~^2 in all (module doc)
                # Under a KL weight beta on the site, log w = log p(x|z) + beta (log p(z) - log q(z)); the
                # reparameterisation identity then gives (1 - beta) w~ + beta w~^2 (beta = 1: w~^2).
                beta = site["scale"]
                factor = weights if not torch.is_tensor(beta) and beta == 1.0 else (1 - beta) + beta * weights
                scale = factor.reshape(factor.shape + (1,) * (value.dim() - factor.dim()))
                value.register_hook(lambda grad, scale=scale: grad * scale)
        surrogate = (weights * (log_w + cancel)).sum()
        loss = -bound.sum()
        warn_if_nan(loss, "loss")
        return loss.detach() - (surrogate - surrogate.detach())

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_w, _, _ = self._log_weights(model, guide, args, kwargs)
            return -float((torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)).sum())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


#: (``--elbo``, ``--gradient``) -> (plain class, JIT-compiled class or None, fixed arguments).
OBJECTIVES: dict[tuple[str, str], tuple[type[ELBO], type[ELBO] | None, dict]] = {
    ("trace", "standard"): (Trace_ELBO, JitTraceELBO, {}),
    ("trace", "stl"): (TraceSTL_ELBO, JitTraceSTL_ELBO, {}),
    ("meanfield", "standard"): (TraceMeanField_ELBO, JitTraceMeanFieldELBO, {}),
    ("iwae", "standard"): (RenyiELBO, None, {"alpha": 0.0}),  # Pyro has no JIT RenyiELBO
    ("iwae", "dreg"): (IWAE_DReG, None, {}),
}


def _entry(name: str, gradient: str) -> tuple[type[ELBO], type[ELBO] | None, dict]:
    if name not in ELBO_NAMES:
        raise ConfigError(f"unknown --elbo {name!r}; choose one of {', '.join(ELBO_NAMES)}")
    if (name, gradient) not in OBJECTIVES:
        fits = [g for (n, g) in OBJECTIVES if n == name]
        raise ConfigError(f"--gradient {gradient} does not apply to --elbo {name}; it takes {', '.join(fits)}")
    return OBJECTIVES[name, gradient]


def make_elbo(name: str = "trace", jit: bool = False, num_particles: int = 1, gradient: str = "standard") -> ELBO:
    """The SVI loss ``name`` with gradient estimator ``gradient`` and ``num_particles`` vectorised particles.

    The datapoints' plate is the only one (``max_plate_nesting=1``), which is
    what keeps ``iwae``'s log-sum-exp per datapoint.
    """
    plain, compiled, fixed = _entry(name, gradient)
    if jit and compiled is None:
        raise ConfigError(f"--jit is not available for --elbo {name} --gradient {gradient}: there is no compiled version")
    return (compiled if jit else plain)(num_particles=num_particles, vectorize_particles=num_particles > 1,
                                        max_plate_nesting=1, **fixed)


def jit_available(name: str, gradient: str = "standard") -> bool:
    """Whether (``name``, ``gradient``) has a JIT-compiled version."""
    return _entry(name, gradient)[1] is not None
