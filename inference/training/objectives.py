r"""Training objectives and their gradient estimators, by name (``--elbo``, ``--gradient``).

Objectives, all lower bounds on log p(x) in nats, summed over the batch:

- ``trace``: Pyro's ``Trace_ELBO``, E_q[log p(x, z) - log q(z|x)] by reparameterised samples;
- ``meanfield``: ``TraceMeanField_ELBO``, the same ELBO with KL(q || p) in closed form where it
  exists (a ``Trace_ELBO`` subclass);
- ``iwae``: E[log (1/k) sum_j w_j], w_j = p(x, z_j) / q(z_j|x) (``RenyiELBO(alpha=0)``, written as tensors by
  `IWAE_ELBO` so that it compiles; Burda et al. 2015).

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
sign, leaving the path term. With several latent sites the score term of site s is
d/dphi log q_phi(z_s | z_parents) at *all* z fixed, so that term is computed on a replay of the
guide on the detached values (`_score_cancelling_terms`): the trace's own distribution of z_s was
computed from the undetached parents, and cancelling through it would also remove the path terms
that reach phi through them.

For DReG the model is run on views of the guide's latent values, and a backward hook on each view
multiplies the gradient by w~_j: the model's path into the encoder gets w~_j^2, the decoder keeps
w~_j, and the path-only log q terms are weighted w~_j^2 in the surrogate itself. Tucker et al.'s
identity is one of the joint reparameterisation z = T_phi(eps) of all sites, so it holds for
several sites, a guide site depending on another included (q(z2|z1) q(z1|x)): the factor applies
once per particle to the whole path derivative. (A hook on each of the guide's own values would
apply it again at every site a later one depends on.) It needs one KL weight over all latent sites.

`TraceMeanField_ELBO` takes each site's KL in closed form given the values the other sites were
sampled at. That is an estimate of the ELBO only when no latent that the model conditions site s on
is sampled by the guide *from* s (Pyro's docs: for every latent z, its parents in the model must
not be descendants of z in the guide). A bottom-up guide q(z1|x) q(z2|z1) against a top-down model
p(z2) p(z1|z2) breaks it: KL(q(z1|x) || p(z1|z2)) integrates z1 out while z2 was drawn given z1.
`meanfield_violation` finds such a pair on a probe batch; `inference.training.step` then trains ``trace``
with one line saying why, or refuses an explicit ``--elbo meanfield``.
"""

from __future__ import annotations

import math
import weakref

import torch
from pyro import poutine
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence

from inference.training.compiled import CompiledSurrogate, SharedParameterFunction, differentiable
from pyro_vae.errors import ConfigError

ELBO_NAMES = ("trace", "meanfield", "iwae")
GRADIENTS = ("standard", "stl", "dreg")


def _latent_sites(trace) -> list[dict]:
    return [site for site in trace.nodes.values()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def _score_cancelling(site: dict, fn=None) -> torch.Tensor:
    """log q_phi(stop_grad(z)) minus its value, per element: zero, with the *score* term's gradient.

    Added to the ELBO surrogate, it cancels the score term that autograd puts into -log q_phi(z).
    Scale (``poutine.scale``) and mask as Pyro applies them to the site's own log-density. ``fn``:
    the site's distribution computed from detached parents (`_score_cancelling_terms`), else the trace's.
    """
    _, score_function_term, _ = site["score_parts"]
    if not is_identically_zero(score_function_term):
        raise ConfigError(f"--gradient stl/dreg need a reparameterised guide; site {site['name']!r} is not")
    fn = site["fn"] if fn is None else fn
    log_prob = scale_and_mask(fn.log_prob(site["value"].detach()), site["scale"], site["mask"])
    return log_prob - log_prob.detach()


def _score_cancelling_terms(latents: list[dict], guide, args, kwargs) -> list[torch.Tensor]:
    """`_score_cancelling` of each latent site of a guide trace (module doc).

    With one site its distribution depends on no other latent, so the trace's own is used. With several,
    ``guide`` (as the trace ran it, particle plate included) is replayed on the detached values, so each
    site's distribution is computed from detached parents and the term holds the score and nothing else.
    """
    if len(latents) == 1:
        return [_score_cancelling(latents[0])]
    detached = {site["name"]: site["value"].detach() for site in latents}
    with poutine.block(hide_types=["sample"]):  # an outer trace would see the sites twice
        replayed = poutine.trace(poutine.condition(guide, data=detached)).get_trace(*args, **kwargs)
    return [_score_cancelling(site, replayed.nodes[site["name"]]["fn"]) for site in latents]


def _particles(elbo: ELBO, fn):
    """``fn`` as `ELBO._get_traces` runs it: in the vectorised particle plate when there is one."""
    return elbo._vectorized_num_particles(fn) if elbo.vectorize_particles else fn


class SurrogateLoss:
    """Mixin: ``differentiable_loss`` and ``loss_and_grads`` from a class's ``loss_and_surrogate_loss`` (tensors):
    the loss's value with the surrogate's gradient, so that one method, traced or not, defines the objective.
    Put it first in the bases, ``class Mine(SurrogateLoss, Trace_ELBO)``."""

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss, surrogate = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        warn_if_nan(loss.detach(), "loss")  # detached: Pyro's would hook a gradient that never comes
        return differentiable(loss, surrogate)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """For ``pyro.infer.SVI``: this objective's gradient (the base class's own would be another)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


class PyroParticleLoss(SurrogateLoss):
    """Mixin for Pyro's ``Trace_ELBO`` and ``TraceMeanField_ELBO``: ``loss_and_surrogate_loss`` as tensors, so that
    `CompiledSurrogate` compiles Pyro's objectives as it compiles ours (`inference.training.compiled` says why not
    with Pyro's JIT losses). The surrogate is the class's own ``_differentiable_loss_particle``'s; the loss value is
    `_particle_loss`, because Pyro's returns it as a Python float (``.item()``), which a trace would freeze."""

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            _, surrogate_particle = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = loss + self._particle_loss(model_trace, guide_trace, surrogate_particle) / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        return loss, surrogate

    def _particle_loss(self, model_trace, guide_trace, surrogate: torch.Tensor) -> torch.Tensor:
        """``Trace_ELBO``'s loss value of one particle, -(log p(x, z) - log q(z|x)), without gradient. It differs
        from the surrogate's value where a guide site is not reparameterised (its score-function term)."""
        log_p = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
        log_q = sum(site["log_prob_sum"] for site in guide_trace.nodes.values() if site["type"] == "sample")
        return -(log_p - log_q).detach()


class JitTraceELBO(CompiledSurrogate, PyroParticleLoss, Trace_ELBO):
    """``Trace_ELBO`` JIT-compiled (checked against it by `inference.training.compiled.check_compiled`). Its
    gradient is ``Trace_ELBO``'s; Pyro 1.9's ``JitTrace_ELBO.differentiable_loss`` gives twice it."""


class JitTraceMeanFieldELBO(CompiledSurrogate, PyroParticleLoss, TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` JIT-compiled (checked against it by `inference.training.compiled.check_compiled`)."""

    def _particle_loss(self, model_trace, guide_trace, surrogate: torch.Tensor) -> torch.Tensor:
        """The ELBO with each closed-form KL: the surrogate's own value (``TraceMeanField_ELBO``'s loss)."""
        return surrogate.detach()


class TraceSTL_ELBO(SurrogateLoss, Trace_ELBO):
    """``Trace_ELBO`` with the sticking-the-landing gradient: the score term of log q dropped (module doc).

    Same loss value and expectation as ``Trace_ELBO``; only the encoder's
    gradient changes. Its ``loss_and_surrogate_loss`` returns tensors, so the
    JIT-compiled `JitTraceSTL_ELBO` is the same code traced.
    """

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        loss, surrogate = 0.0, 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            latents = _latent_sites(guide_trace)
            elbo = sum(site["log_prob_sum"] for site in model_trace.nodes.values() if site["type"] == "sample")
            elbo = elbo - sum(site["log_prob_sum"] for site in latents)
            cancel = sum(t.sum() for t in _score_cancelling_terms(latents, _particles(self, guide), args, kwargs))
            loss = loss - elbo / self.num_particles
            surrogate = surrogate - (elbo + cancel) / self.num_particles
        return loss, surrogate


class JitTraceSTL_ELBO(CompiledSurrogate, TraceSTL_ELBO):
    """`TraceSTL_ELBO` JIT-compiled (checked against it by `inference.training.compiled.check_compiled`)."""


class IWAE_ELBO(SurrogateLoss, RenyiELBO):
    """The IWAE bound ``E[log (1/k) sum_j w_j]`` per datapoint with the standard gradient: ``RenyiELBO(alpha=0)``,
    its value and gradient as tensors.

    Pyro's ``RenyiELBO`` has only ``loss_and_grads``, which returns a float (a host sync every step) and cannot
    be traced. This is the same computation written as ``loss_and_surrogate_loss``: each site's log-density summed
    over the plates the particles do not index (``get_dependent_plate_dims``), log w per particle and datapoint,
    the log-mean-exp over the k particles, and the surrogate ``sum_j w~_j (log p - log q)_j`` with normalised
    weights w~ (no gradient through them). So `JitIWAE_ELBO` is this code traced, and both are checked against
    ``RenyiELBO`` itself (tests; `inference.training.compiled.check_compiled` before a compiled run).
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, vectorize_particles: bool = False,
                 alpha: float = 0.0, ignore_jit_warnings: bool = False, jit_options: dict | None = None, **kwargs):
        super().__init__(alpha=alpha, num_particles=num_particles, max_plate_nesting=max_plate_nesting,
                         vectorize_particles=vectorize_particles, **kwargs)
        self.ignore_jit_warnings, self.jit_options = ignore_jit_warnings, jit_options

    def loss_and_surrogate_loss(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        elbos, surrogates = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            elbo, surrogate = 0.0, 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    log_prob = torch_sum(site["log_prob"], sum_dims)
                    elbo, surrogate = elbo + log_prob.detach(), surrogate + log_prob
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    _, score_function, entropy = site["score_parts"]
                    log_prob = torch_sum(site["log_prob"], sum_dims)
                    elbo = elbo - log_prob.detach()
                    if not is_identically_zero(entropy):
                        if not is_identically_zero(score_function):  # RenyiELBO refuses these too (pyro#1222)
                            raise ConfigError(f"--elbo iwae cannot take the guide site {site['name']!r}, "
                                              "partly reparameterised")
                        surrogate = surrogate - log_prob
                    if not is_identically_zero(score_function):
                        surrogate = surrogate + (self.alpha / (1.0 - self.alpha)) * log_prob
            elbos.append(elbo)
            surrogates.append(surrogate)
        vectorized = self.vectorize_particles and self.num_particles > 1
        elbo, surrogate = (elbos[0], surrogates[0]) if vectorized else (torch.stack(elbos), torch.stack(surrogates))
        log_weights = (1.0 - self.alpha) * elbo  # [k, ...]: one per particle and datapoint, no gradient
        log_mean_weight = torch.logsumexp(log_weights, dim=0, keepdim=True) - math.log(self.num_particles)
        loss = -log_mean_weight.sum() / (1.0 - self.alpha)
        normalized = (log_weights - log_mean_weight).exp()
        return loss, -(normalized * surrogate).sum() / self.num_particles


class JitIWAE_ELBO(CompiledSurrogate, IWAE_ELBO):
    """`IWAE_ELBO` JIT-compiled (checked against the plain loss by `inference.training.compiled.check_compiled`)."""


class IWAE_DReG(Trace_ELBO):
    """The IWAE bound with doubly reparameterised gradients (module doc); its value equals ``RenyiELBO(alpha=0)``'s.

    Needs every sample site inside the datapoints' plate (``max_plate_nesting=1``), a reparameterised
    guide and one KL weight (``poutine.scale``) over all latent sites. Any number of latent sites, one
    depending on another included, and flow guides. ``num_particles`` is k; particles are always
    vectorised. Runs in two parts, `_guide_part` and `_model_part`, with the weight hook put on the
    latent values between them: `JitIWAE_DReG` compiles each part and keeps the hook (which tracing
    would not record) outside both graphs.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, **kwargs):
        if num_particles < 2:
            raise ConfigError("--gradient dreg needs --num-particles of at least 2 (with one particle it is "
                              "--elbo trace --gradient stl)")
        kwargs["vectorize_particles"] = True
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, **kwargs)

    def _guide_part(self, guide, args, kwargs) -> tuple[dict[str, torch.Tensor], torch.Tensor, float | torch.Tensor]:
        """``(latent values {name: [k, B, ...]}, path-only log q [k, B], their KL weight)`` from one run of the
        guide in the particle plate (module doc: the score terms cancelled)."""
        guide = self._vectorized_num_particles(guide)
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
        guide_trace.compute_score_parts()
        latents = _latent_sites(guide_trace)
        self._check_in_plate(latents, args)
        cancel = sum(_score_cancelling_terms(latents, guide, args, kwargs))
        log_q_path = sum(s["log_prob"] for s in latents) - cancel
        scale = _common_scale([(s["name"], s["scale"]) for s in latents])
        return {s["name"]: s["value"] for s in latents}, log_q_path, scale

    def _model_part(self, model, values: dict[str, torch.Tensor], args, kwargs) -> tuple[torch.Tensor,
                                                                                          float | torch.Tensor]:
        """``(log p(x, z) [k, B], the KL weight of its latent sites)``: the model run in the particle plate on
        ``values`` (the hooked views of the guide's)."""
        model = self._vectorized_num_particles(model)
        model_trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        model_trace = prune_subsample_sites(model_trace)
        missing = sorted(set(values) - set(model_trace.nodes))
        if missing:
            raise ConfigError(f"the guide samples {', '.join(map(repr, missing))}, which the model does not")
        model_trace.compute_log_prob()
        sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
        self._check_in_plate(sites, args)
        scale = _common_scale([(name, model_trace.nodes[name]["scale"]) for name in values])
        return sum(s["log_prob"] for s in sites), scale

    def _check_in_plate(self, sites: list[dict], args) -> None:
        shape = (self.num_particles, args[0].shape[0])
        if any(tuple(s["log_prob"].shape) != shape for s in sites):
            raise ConfigError(f"--gradient dreg needs every sample site in the datapoints' plate; log-densities have "
                              f"shapes {[list(s['log_prob'].shape) for s in sites]}, not {list(shape)}")

    def _same_scale(self, guide_scale, model_scale) -> None:
        """`ConfigError` unless the guide's and the model's latent sites carry the same KL weight."""
        _common_scale([("the guide's latent sites", guide_scale), ("the model's", model_scale)])

    def _log_weights(self, model, guide, args, kwargs):
        """``(model log p [k, B], path-only log q [k, B], the model's latent views, their KL weight)``."""
        values, log_q_path, scale = self._guide_part(guide, args, kwargs)
        views = {name: value.view_as(value) for name, value in values.items()}  # the hooks' place (module doc)
        log_p, model_scale = self._model_part(model, views, args, kwargs)
        self._same_scale(scale, model_scale)
        return log_p, log_q_path, list(views.values()), scale

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_p, log_q_path, views, beta = self._log_weights(model, guide, args, kwargs)
        log_w = log_p - log_q_path  # the value of log w (the cancelling terms are zero)
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.num_particles)  # [B]
        weights = torch.softmax(log_w.detach(), dim=0)  # w~ [k, B]
        # The encoder's path gets c = (1 - beta) w~ + beta w~^2 (beta = 1: w~^2): from the reparameterisation
        # identity on the score term, beta (w~ - w~^2) of it, under a KL weight beta on the latent sites.
        factor = weights if not torch.is_tensor(beta) and beta == 1.0 else (1 - beta) + beta * weights  # c / w~
        for value in views:
            if value.requires_grad:  # the model's path into the encoder: w~ more, so c in all
                scale = factor.reshape(factor.shape + (1,) * (value.dim() - factor.dim()))
                value.register_hook(lambda grad, scale=scale: grad * scale)
        surrogate = (weights * log_p).sum() - (weights * factor * log_q_path).sum()
        loss = -bound.sum()
        warn_if_nan(loss, "loss")
        return loss.detach() - (surrogate - surrogate.detach())

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            log_p, log_q, _, _ = self._log_weights(model, guide, args, kwargs)
            return -float((torch.logsumexp(log_p - log_q, dim=0) - math.log(self.num_particles)).sum())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


class JitIWAE_DReG(IWAE_DReG):
    """`IWAE_DReG` with its guide part and its model part each JIT-compiled (`SharedParameterFunction`).

    The weight hook stays in eager code, on the latent values that leave the guide's graph and enter the
    model's: tracing does not record a hook, but a graph's input carries one like any tensor. Compiled per
    guide, model and non-tensor keyword arguments, as Pyro's JIT keys them; checked against `IWAE_DReG` by
    `inference.training.compiled.check_compiled`, which also checks the KL weights of the two parts, here
    compared once, on the first call (a comparison per step would be a host sync).
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting: int = 1, **kwargs):
        super().__init__(num_particles=num_particles, max_plate_nesting=max_plate_nesting, **kwargs)
        weakself = weakref.ref(self)  # the graphs are the objective's: no cycle back to it

        def guide_part(*args, **kwargs):
            self, guide = weakself(), kwargs.pop("_pyro_guide")
            values, log_q_path, scale = IWAE_DReG._guide_part(self, guide, args, kwargs)
            self._names[guide] = tuple(values)
            scale = torch.as_tensor(scale, dtype=log_q_path.dtype, device=log_q_path.device)
            return log_q_path, scale, *values.values()

        def model_part(*inputs, **kwargs):
            model, names = kwargs.pop("_pyro_model"), kwargs.pop("_pyro_latents")
            values, args = dict(zip(names, inputs[:len(names)])), inputs[len(names):]
            log_p, scale = IWAE_DReG._model_part(weakself(), model, values, args, kwargs)
            return log_p, torch.as_tensor(scale, dtype=log_p.dtype, device=log_p.device)

        # each traces on its first call with gradients (`SharedParameterFunction`)
        self._guide_graph = SharedParameterFunction(guide_part, self.ignore_jit_warnings, self.jit_options)
        self._model_graph = SharedParameterFunction(model_part, self.ignore_jit_warnings, self.jit_options)
        self._names: dict = {}  # guide -> its latent sites, in order (set when traced; keyed as the graphs are)
        self._scales_checked = False

    def _guide_part(self, guide, args, kwargs):
        log_q_path, scale, *values = self._guide_graph(*args, _pyro_guide=guide, **kwargs)
        return dict(zip(self._names[guide], values)), log_q_path, scale

    def _model_part(self, model, values, args, kwargs):
        return self._model_graph(*values.values(), *args, _pyro_model=model, _pyro_latents=tuple(values), **kwargs)

    def _same_scale(self, guide_scale, model_scale) -> None:
        if not self._scales_checked:
            super()._same_scale(guide_scale, model_scale)
            self._scales_checked = True


def _common_scale(scales: list[tuple[str, float | torch.Tensor]]) -> float | torch.Tensor:
    """The one ``poutine.scale`` of ``scales`` (name, scale) of latent sites; `ConfigError` if they differ."""
    first_name, first = scales[0]
    for name, scale in scales[1:]:
        same = (scale is first or (not torch.is_tensor(scale) and not torch.is_tensor(first) and scale == first)
                or (torch.is_tensor(scale) and torch.is_tensor(first) and scale.shape == first.shape
                    and bool((scale == first).all())))
        if not same:
            raise ConfigError("--gradient dreg needs one KL weight (poutine.scale) on every latent site of model and "
                              f"guide; {first_name!r} has {first}, {name!r} {scale}")
    return first


def meanfield_violation(model, guide, *args, **kwargs) -> str | None:
    """Why ``TraceMeanField_ELBO`` would not estimate the ELBO of ``model``/``guide`` on these arguments, or None.

    The condition (module doc; Pyro's ``TraceMeanField_ELBO`` docs): for every latent site s whose KL it
    takes in closed form, no site the model draws s depending on may be drawn by the guide depending on s,
    directly or through other sites. Sites in the same order in both programs meet it (what Pyro's own
    check, a warning, tests): then the guide and the model run once each. Otherwise each site's parents
    are read off autograd: both programs run again on the sampled values as leaf tensors, and site b
    depends on site a when b's log-density at its value reaches a's leaf. A dependence that the program
    hides from autograd (``.detach()``, ``.item()``) is not seen. Random: call it under a forked RNG.
    """
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    latents = [site["name"] for site in _latent_sites(guide_trace)]
    model_order = [name for name, site in model_trace.nodes.items() if site["type"] == "sample" and name in latents]
    if model_order == latents:
        return None
    values = {name: guide_trace.nodes[name]["value"] for name in latents}
    discrete = [name for name, value in values.items() if not torch.is_floating_point(value)]
    if discrete:
        return (f"the guide draws its latent sites in another order than the model (guide: {', '.join(latents)}; "
                f"model: {', '.join(model_order)}), and how they depend on each other cannot be traced through the "
                f"discrete site {discrete[0]!r}, so TraceMeanField_ELBO's closed-form KL cannot be shown to "
                "estimate the ELBO")
    leaves = {name: value.detach().requires_grad_() for name, value in values.items()}
    with poutine.block(), torch.enable_grad():
        guide_again = poutine.trace(poutine.condition(guide, data=leaves)).get_trace(*args, **kwargs)
        model_again = poutine.trace(poutine.condition(model, data=leaves)).get_trace(*args, **kwargs)
        guide_parents, model_parents = _parents(guide_again, leaves), _parents(model_again, leaves)
    for site in model_order:
        descendants = _descendants(site, guide_parents)
        both = [name for name in model_order if name in model_parents[site] and name in descendants]
        if both and _closed_form_kl(guide_again.nodes[site]["fn"], model_again.nodes[site]["fn"]):
            other = both[0]
            how = "depending on" if site in guide_parents[other] else "downstream of"
            return (f"the guide draws {other!r} {how} {site!r} while the model draws {site!r} depending on "
                    f"{other!r}, so TraceMeanField_ELBO's closed-form KL for {site!r} would not estimate the ELBO")
    return None


def _parents(trace, leaves: dict[str, torch.Tensor]) -> dict[str, set[str]]:
    """Latent site -> the latent sites (of ``leaves``) its distribution in ``trace`` depends on, by autograd."""
    parents = {}
    for name, leaf in leaves.items():
        others = [other for other in leaves if other != name]
        log_prob = trace.nodes[name]["fn"].log_prob(leaf).sum()
        grads = torch.autograd.grad(log_prob, [leaves[o] for o in others], allow_unused=True) \
            if others and log_prob.requires_grad else [None] * len(others)
        parents[name] = {other for other, grad in zip(others, grads) if grad is not None}
    return parents


def _descendants(site: str, parents: dict[str, set[str]]) -> set[str]:
    """The sites that depend on ``site``, directly or through others, in a program with these ``parents``."""
    found, frontier = set(), [site]
    while frontier:
        current = frontier.pop()
        for child, its_parents in parents.items():
            if current in its_parents and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _closed_form_kl(q, p) -> bool:
    """Whether ``TraceMeanField_ELBO`` takes KL(q || p) in closed form (it samples the term otherwise)."""
    try:
        with torch.no_grad():
            kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


#: (``--elbo``, ``--gradient``) -> (plain class, JIT-compiled class or None, fixed arguments).
OBJECTIVES: dict[tuple[str, str], tuple[type[ELBO], type[ELBO] | None, dict]] = {
    ("trace", "standard"): (Trace_ELBO, JitTraceELBO, {}),
    ("trace", "stl"): (TraceSTL_ELBO, JitTraceSTL_ELBO, {}),
    ("meanfield", "standard"): (TraceMeanField_ELBO, JitTraceMeanFieldELBO, {}),
    ("iwae", "standard"): (IWAE_ELBO, JitIWAE_ELBO, {}),  # RenyiELBO(alpha=0) as tensors; Pyro has no JIT one
    ("iwae", "dreg"): (IWAE_DReG, JitIWAE_DReG, {}),
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
