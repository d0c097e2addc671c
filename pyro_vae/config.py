"""Typed configuration: what a model is made of, and how a run trains it.

`ModelConfig` holds the constructor arguments of a model family; `TrainConfig`
holds everything a training run needs to be repeated. Both round-trip through
plain dicts (``to_dict`` / ``from_dict``) so a run's ``config.json`` and its
checkpoint describe it completely.

**The defaults policy** lives here and nowhere else. A field left ``None`` (``ModelConfig.activation``,
``ModelConfig.likelihood``, ``ModelConfig.mixture_components``, ``TrainConfig.binarize``) is chosen for the
user by `resolve_defaults`, which `inference.svi.train` applies itself, so Python and the command line train
the same model from the same explicit fields; an explicit value always wins. What it chose, and why, is kept in
``TrainConfig.defaults`` (so in ``config.json``) and said once at the start of a run (`defaults_line`):

- likelihood: ``continuous-bernoulli`` under ``dequantize="uniform"``; ``discretized-logistic`` for grey
  levels (``binarize="none"``, a ``mixture_components`` given, or colour images); else ``bernoulli``;
- binarize: ``dynamic`` under the Bernoulli likelihood (Burda et al.'s protocol), else ``none``;
- activation (`default_activation`): ``relu`` under a discrete likelihood, where tanh stalls (measured:
  BENCHMARKS.md, "8-bit MNIST"), else ``tanh`` (Burda et al.'s network);
- mixture_components: 10 (PixelCNN++'s K) under the discretized logistic;
- init (`INITS`): ``burda2015`` under the Bernoulli likelihood (Glorot-uniform weights, zero biases, p(x|z)
  starting at the training images' mean pixel: without it the two-layer family and the VampPrior collapse),
  else ``as-built``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyro_vae.errors import ConfigError
from pyro_vae.schedule import SCHEDULES

if TYPE_CHECKING:
    from pyro_vae.data import DataSpec
    from pyro_vae.sources import SourceOptions


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_finite_number(value: Any, integer: bool = False) -> bool:
    """``value`` is an int (or, unless ``integer``, a float), not a bool, and finite as a float.

    For values read from files: an int too large for a float is refused, not an OverflowError.
    """
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


#: How deep lists may nest in a plain value (a model's constructor argument from --model-args or a checkpoint).
MAX_NESTING = 16


def is_plain_value(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is what a model's constructor arguments may be (JSON's values less objects): None, a bool,
    an int, a str, a finite float, or a list or tuple of such values nested at most `MAX_NESTING` deep."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return is_finite_number(value)
    return isinstance(value, (list, tuple)) and depth < MAX_NESTING and all(
        is_plain_value(v, depth + 1) for v in value)


def _finite(value: Any, low: float, strict: bool) -> bool:
    """A finite real number above ``low`` (``strict``) or at least ``low``."""
    return is_finite_number(value) and (value > low if strict else value >= low)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


#: Model families the config's own fields size (``models.build_from_config`` builds them): the one-layer VAE, and
#: L >= 1 stochastic layers (``models.hierarchical``). Any other ``family`` is the name of a registered model
#: (`models.register_model`), built by its constructor from ``model_args``.
FAMILIES = ("vae", "hierarchical")
#: Priors of the (top) latent layer (``models.priors``): N(0, I), or the VampPrior of Tomczak & Welling (2018).
PRIORS = ("standard", "vamp")
#: K, the VampPrior's pseudo-inputs, unless ``--pseudo-inputs`` says otherwise (the paper's choice for MNIST).
DEFAULT_PSEUDO_INPUTS = 500
#: K, the logistics per pixel of the ``discretized-logistic`` likelihood, unless ``--mixture-components`` says
#: otherwise (PixelCNN++'s 10; K = 1 is the plain discretized logistic).
DEFAULT_MIXTURE_COMPONENTS = 10
#: Bits per pixel value of grey-level data unless the files say otherwise (uint8: levels 0..255).
DEFAULT_BIT_DEPTH = 8
#: Likelihoods over the integer levels 0..2^b - 1 (``models.likelihoods.DISCRETE_LIKELIHOODS``, named here so the
#: data layer can serve levels without importing models).
DISCRETE_LIKELIHOODS = ("discretized-logistic", "beta-binomial")
#: ``--dequantize``: none, or uniform (train on (x + u) / 2^b, u ~ U[0, 1)^D fresh per batch).
DEQUANTIZE_CHOICES = ("none", "uniform")
#: p(x|z) for grey levels and colour images unless one is named: a pmf over the integer levels 0..2^b - 1, so the
#: report gives bits/dim of the discrete image (issue 26).
LEVELS_LIKELIHOOD = "discretized-logistic"
#: p(x|z) under ``dequantize="uniform"`` unless one is named: a density on [0, 1].
DEQUANTIZED_LIKELIHOOD = "continuous-bernoulli"
#: ``init``: how a fresh run's parameters start. ``burda2015``: Glorot-uniform weights, zero biases and p(x|z)'s
#: output bias at the training images' mean pixel (Burda et al. 2015's code; a model's ``initialise_burda2015``);
#: ``as-built``: as the model's constructor left them (PyTorch's default initialisation for the shipped nets).
INITS = ("burda2015", "as-built")
#: The activation where nothing below asks for another: Burda et al. (2015)'s tanh network.
DEFAULT_ACTIVATION = "tanh"


def default_activation(likelihood: str | None, prior: str) -> tuple[str, str]:
    """``(activation, why)`` for a model that names none: ``relu`` under a discrete likelihood (with tanh the
    mixture of discretized logistics stops using z), else ``tanh``, whatever the ``prior`` (from the ``burda2015``
    start the VampPrior learns best with tanh: relu trailed it by 6.6 nats after 10 epochs). Measured in
    BENCHMARKS.md."""
    if likelihood in DISCRETE_LIKELIHOODS:
        return "relu", f"under the {likelihood} likelihood"
    return DEFAULT_ACTIVATION, "Burda et al. 2015's network"


def obs_scale_unused(likelihood: str) -> str:
    """Why ``--obs-scale`` is refused under ``likelihood``: it is the gaussian likelihood's standard deviation alone
    (a config whose value is not 1, `ModelConfig.validated`; the flag given at all, ``inference.svi``)."""
    return (f"--obs-scale sets the gaussian likelihood's standard deviation; the {likelihood!r} likelihood does not "
            "use it: drop it, or use --likelihood gaussian")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a model: for the ``vae`` family ``x_dim -> hidden_dims -> z_dim`` and back.

    ``likelihood`` and ``guide`` are names from the registries in
    ``models.likelihoods`` and ``models.guides``; ``arch`` one of
    ``pyro_vae.nets.ARCHITECTURES``.

    ``family`` (`FAMILIES`) picks the model class. The ``hierarchical`` family has L stochastic layers
    z1 (nearest the data) .. zL of sizes ``latent_dims``, layer l's networks of widths ``layer_hidden_dims[l]``
    (q(z_l | z_{l-1}) in that order, p(z_{l-1} | z_l) mirrored; z_0 = x); its ``z_dim`` and ``hidden_dims`` are
    its first layer's (z1, the code layer), so they must equal ``latent_dims[0]`` and ``layer_hidden_dims[0]``:
    `ModelConfig.hierarchical` fills them in. The ``vae`` family leaves both per-layer fields None.

    ``prior`` (`PRIORS`) is p(z) of the vae family and p(z_L) of the hierarchical one; ``pseudo_inputs`` is the
    VampPrior's K. A config written before these fields existed loads as the one-layer VAE with N(0, I).

    ``mixture_components`` is K of the ``discretized-logistic`` likelihood, ``bit_depth`` b of the discrete
    likelihoods (levels 0..2^b - 1); other likelihoods leave both at their defaults (older configs load so).

    ``activation``, ``likelihood`` and ``mixture_components`` may be None: the defaults policy chooses them
    (`resolve_defaults` for a training run, `ModelConfig.resolved` for a model alone; the module doc).

    A ``family`` outside `FAMILIES` names a registered model of any class (one of your own, made known by
    ``--import``): it is built as ``cls(**model_args)``, ``model_args`` holding plain JSON values, and the fields
    above (the families' own) stay at their defaults (`own_model`).
    """

    x_dim: int = 784
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (200, 200)
    activation: str | None = None  # None: `default_activation` of the likelihood and prior
    likelihood: str | None = None  # None: chosen from the data by `resolve_defaults` (bernoulli for a model alone)
    guide: str = "diagonal"
    obs_scale: float = 1.0  # standard deviation of the ``gaussian`` likelihood
    flow_steps: int = 2  # transforms of the ``iaf`` guide
    arch: str = "mlp"
    image_shape: tuple[int, ...] | None = None  # (C, H, W) of the x_dim pixels; None: 1 x 28 x 28 when x_dim is 784
    family: str = "vae"
    latent_dims: tuple[int, ...] | None = None  # hierarchical: sizes of z1..zL
    layer_hidden_dims: tuple[tuple[int, ...], ...] | None = None  # hierarchical: widths of each layer's networks
    prior: str = "standard"
    pseudo_inputs: int = DEFAULT_PSEUDO_INPUTS  # K of the VampPrior (prior "vamp" only)
    mixture_components: int | None = None  # K of the discretized-logistic likelihood; None: 10
    bit_depth: int = DEFAULT_BIT_DEPTH  # b of a discrete likelihood: levels 0..2^b - 1
    model_args: dict[str, Any] | None = None  # a registered model's constructor arguments (``family`` not in FAMILIES)

    def __post_init__(self) -> None:
        # JSON gives lists; keep the tuple so configs compare equal after a round trip.
        for name in ("hidden_dims", "image_shape", "latent_dims"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and all(isinstance(h, int) for h in value):
                object.__setattr__(self, name, tuple(value))
        value = self.layer_hidden_dims
        if isinstance(value, (list, tuple)) and all(isinstance(w, (list, tuple)) and all(isinstance(h, int) for h in w)
                                                    for w in value):
            object.__setattr__(self, "layer_hidden_dims", tuple(tuple(w) for w in value))

    @classmethod
    def hierarchical(cls, latent_dims: tuple[int, ...], layer_hidden_dims: tuple[tuple[int, ...], ...],
                     **settings: Any) -> "ModelConfig":
        """The ``hierarchical`` family's config, its ``z_dim`` and ``hidden_dims`` taken from the first layer.

        ``ModelConfig.hierarchical((100, 50), ((200, 200), (100, 100)))`` is Burda et al.'s two-layer model.
        """
        latent, widths = tuple(latent_dims), tuple(tuple(w) for w in layer_hidden_dims)
        return cls(family="hierarchical", latent_dims=latent, layer_hidden_dims=widths,
                   z_dim=latent[0] if latent else 0, hidden_dims=widths[0] if widths else (), **settings)

    def changed(self, changes: dict[str, Any]) -> "ModelConfig":
        """This config with the fields in ``changes`` set (a preset's model changed by command-line flags).

        The hierarchical family is sized by ``latent_dims`` and ``layer_hidden_dims``, each one not changed
        kept from this config (a one-layer config gives its ``z_dim`` and ``hidden_dims`` as layer 1), and its
        ``z_dim`` and ``hidden_dims`` follow its first layer: changing those two instead is refused
        (`ConfigError`). ``family="vae"`` on a hierarchical config keeps its first layer alone.
        """
        changes = dict(changes)
        if changes.get("family", self.family) != "hierarchical":
            base = self if self.family != "hierarchical" else dataclasses.replace(self, latent_dims=None,
                                                                                  layer_hidden_dims=None)
            return dataclasses.replace(base, **changes)
        one_layer = [flag for name, flag in (("z_dim", "--latent-dim"), ("hidden_dims", "--hidden-dims"))
                     if name in changes]
        _require(not one_layer, f"{' and '.join(one_layer)} {'size' if len(one_layer) > 1 else 'sizes'} the vae "
                                "family's one layer; the hierarchical family "
                                "takes --latent-dims (z1 first, e.g. 100,50) and --layer-hidden-dims (e.g. "
                                "200,200/100,100)")
        latent = tuple(changes.pop("latent_dims", self.latent_dims or (self.z_dim,)))
        widths = tuple(changes.pop("layer_hidden_dims", self.layer_hidden_dims or (self.hidden_dims,)))
        return dataclasses.replace(self, **changes, latent_dims=latent, layer_hidden_dims=widths,
                                   z_dim=latent[0] if latent else 0, hidden_dims=widths[0] if widths else ())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """The config of a saved ``model`` section; a field it lacks takes what a run saved before that field
        trained with (`_LEGACY_MODEL`), so an old run loads as the model it was. A registered model of one's own
        (a ``family`` outside `FAMILIES`) takes only its own fields (`_OWN_MODEL_FIELDS`)."""
        if isinstance(d.get("family"), str) and d["family"] not in FAMILIES:
            return cls(**{k: v for k, v in d.items() if k in _OWN_MODEL_FIELDS})
        return cls(**{**_LEGACY_MODEL, **d})

    @property
    def own_model(self) -> bool:
        """Whether ``family`` names a registered model built from ``model_args`` (not one of `FAMILIES`)."""
        return self.family not in FAMILIES

    def resolved(self) -> "ModelConfig":
        """This config with every field left None chosen by the defaults policy, for a model built without data:
        the likelihood (``discretized-logistic`` when ``mixture_components`` is given, else ``bernoulli``),
        ``mixture_components`` (10), the activation (`default_activation`)."""
        if self.own_model:
            return self  # its class decides its likelihood and networks
        likelihood = LEVELS_LIKELIHOOD if self.mixture_components is not None else "bernoulli"
        return _resolved_model(self, (likelihood, ""), {})

    @property
    def num_layers(self) -> int:
        """L, the stochastic layers: ``len(latent_dims)`` for the hierarchical family, else 1."""
        return len(self.latent_dims) if self.family == "hierarchical" and self.latent_dims else 1

    @property
    def image(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` of an image: ``image_shape``, else (1, 28, 28) for 784 pixels, else None (unknown)."""
        return self.image_shape or ((1, 28, 28) if self.x_dim == 784 else None)

    def validated(self) -> "ModelConfig":
        """``self``, or `ConfigError` naming the first setting no model can take (as its flag); the fields the
        defaults policy chooses are checked as `resolved` fills them. A registered model of its own
        (`own_model`) is checked for a name and plain ``model_args`` here, and against its constructor when
        built (`models.build_from_config`)."""
        if self.own_model:
            return self._validate_own_model()
        _require(self.model_args is None,
                 f"--model-args builds a registered model of your own from its constructor; the {self.family} family "
                 f"is sized by its flags ({_SIZING_FLAGS.get(self.family, '--latent-dim, --hidden-dims')}, ...): drop "
                 "--model-args, or name your model with --family NAME")
        if None in (self.activation, self.likelihood, self.mixture_components):
            self.resolved().validated()
            return self
        _require(_positive_int(self.x_dim), f"x_dim must be a positive integer, got {self.x_dim!r}")
        for name in ("family", "prior"):
            _require(isinstance(getattr(self, name), str), f"--{name} must be a name, got {getattr(self, name)!r}")
        _require(self.family in FAMILIES, f"--family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.family == "hierarchical":  # first: its z_dim and hidden_dims are read from its layers
            self._validate_layers()
        else:
            _require(self.latent_dims is None and self.layer_hidden_dims is None,
                     "--latent-dims and --layer-hidden-dims size the hierarchical family's layers; the vae family "
                     "takes --latent-dim and --hidden-dims: drop them, or add --family hierarchical")
        _require(_positive_int(self.z_dim), f"--latent-dim must be a positive integer, got {self.z_dim!r}")
        _require(isinstance(self.hidden_dims, tuple) and len(self.hidden_dims) > 0
                 and all(_positive_int(h) for h in self.hidden_dims),
                 f"--hidden-dims must be one or more positive integers, got {self.hidden_dims!r}")
        _require(_positive_int(self.flow_steps), f"--flow-steps must be a positive integer, got {self.flow_steps!r}")
        _require(self.image_shape is None or (isinstance(self.image_shape, tuple) and len(self.image_shape) == 3
                                              and all(_positive_int(d) for d in self.image_shape)
                                              and math.prod(self.image_shape) == self.x_dim),
                 f"image_shape must be (C, H, W) with C * H * W = x_dim {self.x_dim}, got {self.image_shape!r}")
        _require(_finite(self.obs_scale, 0.0, strict=True) and self.obs_scale >= 1e-6,
                 f"--obs-scale must be a positive finite number (at least 1e-6), got {self.obs_scale!r}")
        for name in ("activation", "likelihood", "guide", "arch"):
            _require(isinstance(getattr(self, name), str), f"--{name} must be a name, got {getattr(self, name)!r}")
        _require(self.likelihood == "gaussian" or self.obs_scale == 1.0, obs_scale_unused(self.likelihood))
        self._validate_prior()
        _require(_positive_int(self.mixture_components) and self.mixture_components <= 100,
                 f"--mixture-components must be an integer from 1 to 100, got {self.mixture_components!r}")
        _require(self.likelihood == "discretized-logistic" or self.mixture_components == DEFAULT_MIXTURE_COMPONENTS,
                 f"--mixture-components sets the discretized-logistic likelihood's K; the {self.likelihood!r} "
                 "likelihood does not use it: drop it, or use --likelihood discretized-logistic")
        _require(_positive_int(self.bit_depth) and self.bit_depth <= 16,
                 f"bit_depth must be an integer from 1 to 16, got {self.bit_depth!r}")
        return self

    def _validate_own_model(self) -> "ModelConfig":
        _require(isinstance(self.family, str) and self.family != "",
                 f"--family must be a registered model's name, got {self.family!r}")
        args = self.model_args
        if not (args is None or (isinstance(args, dict) and all(isinstance(k, str) and is_plain_value(v)
                                                                  for k, v in args.items()))):
            raise ConfigError(f"--model-args must be a JSON object of argument names to plain values (null, "
                              f"true/false, numbers, strings, lists of them nested at most {MAX_NESTING} deep), got "
                              f"{type(args).__name__}")
        given = [name for name, default in _FAMILY_FIELDS.items() if getattr(self, name) != default]
        _require(not given, f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} the {'/'.join(FAMILIES)} "
                            f"families' setting{'s' if len(given) > 1 else ''}; --family {self.family} is built by "
                            "its constructor from --model-args alone")
        return self

    @property
    def discrete_levels(self) -> bool:
        """Whether the likelihood is a pmf over the integer levels 0..2^b - 1 (its data are levels)."""
        return self.likelihood in DISCRETE_LIKELIHOODS

    def _validate_prior(self) -> None:
        _require(self.prior in PRIORS, f"--prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        _require(_positive_int(self.pseudo_inputs),
                 f"--pseudo-inputs must be a positive integer, got {self.pseudo_inputs!r}")
        _require(self.prior == "vamp" or self.pseudo_inputs == DEFAULT_PSEUDO_INPUTS,
                 "--pseudo-inputs sets the VampPrior's number of pseudo-inputs; the standard prior does not use it: "
                 "drop it, or add --prior vamp")
        _require(self.prior != "vamp" or self.guide != "iaf",
                 "--prior vamp is a mixture of the guide's q(z|u_k), which takes --guide diagonal or full, not iaf")

    def _validate_layers(self) -> None:
        latent, widths = self.latent_dims, self.layer_hidden_dims
        _require(isinstance(latent, tuple) and len(latent) > 0 and all(_positive_int(d) for d in latent),
                 f"--latent-dims must be one or more positive integers (z1 first), got {latent!r}")
        _require(isinstance(widths, tuple) and all(isinstance(w, tuple) and len(w) > 0
                                                   and all(_positive_int(h) for h in w) for w in widths),
                 f"--layer-hidden-dims must give one or more positive widths per layer, got {widths!r}")
        _require(len(widths) == len(latent),
                 f"--layer-hidden-dims must give one list of widths per layer: {len(latent)} for --latent-dims "
                 f"{','.join(map(str, latent))}, got {len(widths)}")
        _require(self.z_dim == latent[0] and tuple(self.hidden_dims) == widths[0],
                 f"the hierarchical family's z_dim and hidden_dims are its first layer's ({latent[0]} and "
                 f"{widths[0]}), got {self.z_dim} and {self.hidden_dims}; build it with ModelConfig.hierarchical")
        _require(self.guide == "diagonal",
                 f"the hierarchical family's layers are diagonal Normals; --guide {self.guide} is the vae family's")
        _require(self.arch == "mlp", f"the hierarchical family's networks are MLPs; --arch {self.arch} is the vae family's")


#: The flags that size each family (what --model-args is not, for them).
_SIZING_FLAGS = {"vae": "--latent-dim, --hidden-dims", "hierarchical": "--latent-dims, --layer-hidden-dims"}
#: The fields a registered model of one's own keeps besides its ``family`` and ``model_args`` (set from the data).
_OWN_MODEL_FIELDS = ("family", "model_args", "x_dim", "image_shape", "bit_depth")
#: The fields only `FAMILIES` read (all but `_OWN_MODEL_FIELDS`), at their defaults.
_FAMILY_FIELDS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name not in _OWN_MODEL_FIELDS}


def _resolved_model(model: ModelConfig, likelihood: tuple[str, str], chosen: dict[str, str]) -> ModelConfig:
    """``model`` with its None fields filled: ``likelihood`` (name, why) if it names none; each choice's flag
    and reason recorded in ``chosen``."""
    changes: dict[str, Any] = {}
    if model.likelihood is None:
        changes["likelihood"] = likelihood[0]
        chosen["likelihood"] = likelihood[1]
    name = changes.get("likelihood", model.likelihood)
    if model.mixture_components is None:
        changes["mixture_components"] = DEFAULT_MIXTURE_COMPONENTS
        if name == LEVELS_LIKELIHOOD:
            chosen["mixture_components"] = "PixelCNN++'s K"
    if model.activation is None:
        changes["activation"], chosen["activation"] = default_activation(name, model.prior)
    return dataclasses.replace(model, **changes) if changes else model


@dataclass(frozen=True)
class Preset:
    """A published setup: the model, the training settings it changes, and the number it reported.

    ``published_nll``: test -log p(x) in nats on dynamically binarised MNIST.
    """

    model: ModelConfig
    train: dict[str, Any] = field(default_factory=dict)
    published_nll: float | None = None
    source: str = ""


#: ``burda2015``: the VAE of Burda et al. (2015), Table 1 (784-200-200-50, tanh,
#: k=1). ``burda2015-iwae``: the same net trained on the IWAE bound with k=50.
#: ``pyro-example``: Pyro's own VAE example (one hidden layer of 400, softplus, z=50).
#: ``burda2015-2layer``: Burda et al.'s two stochastic layers, 784-200-200-[100]-100-100-[50], tanh, trained on
#: the ELBO by sampled KL (``--elbo trace``: the closed-form ``meanfield`` is biased for stacked layers);
#: ``burda2015-2layer-iwae``: the same net on the IWAE bound with k=50.
#: The burda2015 presets leave the activation to the defaults policy: tanh, as the paper, under the Bernoulli
#: likelihood and N(0, I); relu where tanh fails (a discrete likelihood, the VampPrior).
_TWO_LAYER = ModelConfig.hierarchical((100, 50), ((200, 200), (100, 100)))
PRESETS: dict[str, Preset] = {
    "burda2015": Preset(ModelConfig(z_dim=50, hidden_dims=(200, 200)), {},
                        86.76, "Burda et al. 2015, Table 1 (VAE, k=1; 3280 epochs; k=5000 estimate)"),
    "burda2015-iwae": Preset(ModelConfig(z_dim=50, hidden_dims=(200, 200)),
                             {"elbo": "iwae", "num_particles": 50},
                             84.78, "Burda et al. 2015, Table 1 (IWAE, k=50; 3280 epochs; k=5000 estimate)"),
    "pyro-example": Preset(ModelConfig(z_dim=50, hidden_dims=(400,), activation="softplus"), {}, None,
                           "Pyro's examples/vae/vae.py"),
    "burda2015-2layer": Preset(_TWO_LAYER, {"elbo": "trace"}, 85.33,
                               "Burda et al. 2015, Table 1 (VAE, two stochastic layers, k=1; 3280 epochs; "
                               "k=5000 estimate)"),
    "burda2015-2layer-iwae": Preset(_TWO_LAYER, {"elbo": "iwae", "num_particles": 50}, 82.90,
                                    "Burda et al. 2015, Table 1 (IWAE, two stochastic layers, k=50; 3280 epochs; "
                                    "k=5000 estimate)"),
}
DEFAULT_PRESET = "burda2015"


@dataclass
class TrainConfig:
    """Everything one training run needs; saved as ``OUT/config.json``.

    Units: ``lr`` is Adam's step size on the summed (per-batch) loss, as in
    Pyro's examples; ``train_limit``/``test_limit`` take the first N images.
    ``elbo`` names the objective and ``gradient`` its estimator (``inference.training.objectives``), ``num_particles``
    its samples per datapoint (k of the IWAE bound for ``iwae``). ``schedule`` names the learning-rate schedule
    (`pyro_vae.schedule`: ``lr`` is its base rate); ``cuda_graph`` whether the step is captured in a CUDA graph
    (`inference.training.cuda_graph`; None: when on CUDA and it checks out). A config saved before a field existed loads
    with its default (``schedule`` constant, as those runs trained), or as those runs trained where the default
    is now the policy's (tanh, bernoulli, dynamic binarisation, K = 10). ``binarize`` None and the model's None
    fields are chosen by `resolve_defaults`, which records its choices in ``defaults``.
    """

    model: ModelConfig = field(default_factory=lambda: PRESETS[DEFAULT_PRESET].model)
    preset: str | None = DEFAULT_PRESET
    dataset: str = "mnist"
    binarize: str | None = None  # None: dynamic under the bernoulli likelihood, else none (`resolve_defaults`)
    data_dir: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    schedule: str = "constant"  # learning rate per epoch (pyro_vae.schedule): constant, or burda2015's protocol
    elbo: str = "meanfield"  # the ELBO with the KL in closed form; BENCHMARKS.md, "Equal budget, equal model"
    gradient: str = "standard"  # gradient estimator (inference.objectives.GRADIENTS): standard, stl, dreg
    num_particles: int = 1
    kl_weight: float = 1.0
    kl_warmup: float = 0.0  # epochs over which the KL weight rises linearly from 0 to kl_weight
    jit: bool | None = None  # None: JIT-compile the loss when Pyro can and it checks out (inference.svi.build_step)
    cuda_graph: bool | None = None  # None: capture the step in a CUDA graph on CUDA when it checks out
    device: str = "auto"
    seed: int = 0
    test_seed: int = 0
    out: str | None = None
    # How a folder or array source is shaped and split (pyro_vae.sources.SourceOptions); MNIST ignores the split.
    image_size: int | None = None
    channels: int | None = None
    channels_first: bool = False
    test_fraction: float = 0.1
    split_seed: int = 0
    held_out_from: int | None = None  # recorded: the source's image count when its test split was held out
    memory_budget: float | None = None  # GB a folder's training images may take before they are streamed
    workers: int = 2  # processes decoding a streamed folder
    # Grey levels: ``dequantize`` uniform trains a continuous likelihood on (x + u) / 2^b; ``bit_depth`` b of the
    # files (recorded from the data; given, it must be theirs). None: not known (binarised or float data).
    dequantize: str = "none"
    bit_depth: int | None = None
    init: str | None = None  # INITS; None: burda2015 under the bernoulli likelihood, else as-built
    # What `resolve_defaults` chose for the user: field name -> why (said at the start of the run).
    defaults: dict[str, str] = field(default_factory=dict)

    @property
    def encoding(self) -> str:
        """How pixels reach the model (`pyro_vae.images.ENCODINGS`): ``levels`` (integers 0..2^b - 1) for a
        discrete likelihood, ``dequantized`` ((x + u) / 2^b) under ``--dequantize uniform``, else ``unit``
        ([0, 1], or 0/1 when binarised)."""
        if self.model.discrete_levels:
            return "levels"
        return "dequantized" if self.dequantize == "uniform" else "unit"

    def source_options(self) -> "SourceOptions":
        """The `pyro_vae.sources.SourceOptions` of this run's data."""
        from pyro_vae.sources import SourceOptions

        return SourceOptions(self.image_size, self.channels, self.channels_first, self.test_fraction, self.split_seed)

    def data_spec(self) -> "DataSpec":
        """The `pyro_vae.data.DataSpec` of this run's training and test splits (``memory_budget`` in bytes)."""
        from pyro_vae.data import DataSpec

        return DataSpec(self.dataset, self.binarize, self.data_dir, self.train_limit, self.test_limit, self.seed,
                        self.test_seed, self.source_options(), self.encoding,
                        memory_budget=None if self.memory_budget is None else self.memory_budget * 1e9,
                        workers=self.workers)

    def evaluation_data(self, data_dir: str | None = None, test_limit: int | None = None,
                        encoding: str | None = None) -> "DataSpec":
        """The `pyro_vae.data.DataSpec` of this run's test split read again (a report, figures): under ``data_dir``
        when given (the only root downloaded into: the recorded one comes from an untrusted file), else the
        recorded root; the first ``test_limit`` images; ``encoding``, else the run's; shaped as trained
        (`evaluation_options`), and checked against the count the split was held out of."""
        from pyro_vae.data import DataSpec

        return DataSpec(self.dataset, self.binarize, data_dir or self.data_dir, test_limit=test_limit,
                        test_seed=self.test_seed, options=self.evaluation_options(),
                        encoding=encoding or self.encoding, download=data_dir is not None,
                        held_out_from=self.held_out_from)

    def evaluation_options(self) -> "SourceOptions":
        """`source_options` with the channels the model was trained on: a test split read again (report,
        figures) has the training images' shape even where its own files alone would say otherwise."""
        options = self.source_options()
        image = self.model.image
        return dataclasses.replace(options, channels=image[0]) if options.channels is None and image else options

    def validated(self) -> "TrainConfig":
        """``self``, or `ConfigError` naming the first setting that cannot train (as its flag). A config with
        fields left to the defaults policy is checked as `resolve_defaults` fills them (without reading data)."""
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        if None in (self.binarize, self.init) or (not self.model.own_model and None in (
                self.model.activation, self.model.likelihood, self.model.mixture_components)):
            resolve_defaults(self, channels=1).validated()
            return self
        self.model.validated()
        _require(_positive_int(self.epochs), f"--epochs must be a positive integer, got {self.epochs!r}")
        _require(_positive_int(self.batch_size), f"--batch-size must be a positive integer, got {self.batch_size!r}")
        _require(_positive_int(self.num_particles), f"--num-particles must be a positive integer, got {self.num_particles!r}")
        _require(_finite(self.lr, 0.0, strict=True), f"--lr must be a positive finite number, got {self.lr!r}")
        _require(_finite(self.kl_weight, 0.0, strict=False), f"--kl-weight must be finite and at least 0, got {self.kl_weight!r}")
        _require(_finite(self.kl_warmup, 0.0, strict=False),
                 f"--kl-warmup must be a finite number of epochs, at least 0, got {self.kl_warmup!r}")
        for name in ("train_limit", "test_limit"):
            value = getattr(self, name)
            _require(value is None or _positive_int(value),
                     f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        _require(self.image_size is None or (_positive_int(self.image_size) and self.image_size <= 4096),
                 f"--image-size must be a positive integer (at most 4096), got {self.image_size!r}")
        _require(self.channels in (None, 1, 3), f"--channels must be 1 or 3, got {self.channels!r}")
        _require(isinstance(self.channels_first, bool), f"channels_first must be True or False, got {self.channels_first!r}")
        _require(_finite(self.test_fraction, 0.0, strict=True) and self.test_fraction < 1,
                 f"--test-fraction must be a number between 0 and 1 (exclusive), got {self.test_fraction!r}")
        _require(self.held_out_from is None or _positive_int(self.held_out_from),
                 f"held_out_from must be a positive integer, got {self.held_out_from!r}")
        _require(self.memory_budget is None or _finite(self.memory_budget, 0.0, strict=False),
                 f"--memory-budget must be a finite number of GB, at least 0, got {self.memory_budget!r}")
        _require(isinstance(self.workers, int) and not isinstance(self.workers, bool) and 0 <= self.workers <= 64,
                 f"--workers must be an integer from 0 to 64, got {self.workers!r}")
        for name in ("seed", "test_seed", "split_seed"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32,
                     f"--{name.replace('_', '-')} must be an integer from 0 to 2**32 - 1, got {value!r}")
        _require(self.jit in (None, True, False), f"jit must be True, False or None, got {self.jit!r}")
        _require(self.cuda_graph in (None, True, False), f"cuda_graph must be True, False or None, got {self.cuda_graph!r}")
        _require(isinstance(self.schedule, str) and self.schedule in SCHEDULES,
                 f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        _require(self.dequantize in DEQUANTIZE_CHOICES,
                 f"--dequantize must be one of {', '.join(DEQUANTIZE_CHOICES)}, got {self.dequantize!r}")
        _require(not (self.dequantize != "none" and self.model.discrete_levels),
                 f"--dequantize makes grey levels continuous for a density; the {self.model.likelihood} likelihood "
                 "is a pmf over the integer levels themselves: drop --dequantize, or use a continuous likelihood")
        _require(not (self.dequantize != "none" and self.model.likelihood == "bernoulli"),
                 "--dequantize is for grey levels under a continuous likelihood; the bernoulli likelihood takes "
                 "binarised pixels: drop --dequantize, or pick --likelihood gaussian or continuous-bernoulli")
        _require(not ((self.model.discrete_levels or self.dequantize != "none") and self.binarize != "none"),
                 f"--binarize {self.binarize} makes the pixels 0/1, but the {self.model.likelihood} likelihood"
                 f"{' with --dequantize' if self.dequantize != 'none' else ''} models grey levels: use --binarize "
                 "none, or the bernoulli likelihood")
        _require(self.bit_depth is None or (_positive_int(self.bit_depth) and self.bit_depth <= 16),
                 f"--bit-depth must be an integer from 1 to 16, got {self.bit_depth!r}")
        _require(self.init in INITS, f"--init must be one of {', '.join(INITS)}, got {self.init!r}")
        _require(isinstance(self.defaults, dict) and all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in self.defaults.items()),
                 f"defaults must map field names to reasons, got {self.defaults!r}")
        for name in ("dataset", "binarize", "elbo", "gradient", "device"):
            _require(isinstance(getattr(self, name), str), f"--{name} must be a name, got {getattr(self, name)!r}")
        for name in ("preset", "data_dir", "out"):
            value = getattr(self, name)
            _require(value is None or (isinstance(value, str) and value != ""),
                     f"--{name.replace('_', '-')} must be a non-empty name or path, got {value!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``config.json`` and the checkpoint; a registered model of one's own is written as its
        ``family``, ``model_args`` and the data's shape alone (the families' fields mean nothing to it)."""
        d = dataclasses.asdict(self)
        d["model"]["hidden_dims"] = list(self.model.hidden_dims)
        if self.model.image_shape is not None:
            d["model"]["image_shape"] = list(self.model.image_shape)
        if self.model.latent_dims is not None:
            d["model"]["latent_dims"] = list(self.model.latent_dims)
        if self.model.layer_hidden_dims is not None:
            d["model"]["layer_hidden_dims"] = [list(w) for w in self.model.layer_hidden_dims]
        if self.model.own_model:
            d["model"] = {k: v for k, v in d["model"].items() if k in _OWN_MODEL_FIELDS}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config ``to_dict`` wrote; a field it lacks (an older run's) takes what that run trained with."""
        d = dict(d)
        if not isinstance(d.get("model"), dict):
            raise ConfigError("the config has no model section")
        d["model"] = ModelConfig.from_dict(d["model"])
        d.setdefault("binarize", "dynamic")
        d.setdefault("init", "as-built")  # runs before the field trained from PyTorch's initialisation
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: What a saved model config that lacks a field trained with, from before the defaults policy chose it.
_LEGACY_MODEL = {"activation": DEFAULT_ACTIVATION, "likelihood": "bernoulli",
                 "mixture_components": DEFAULT_MIXTURE_COMPONENTS}


def resolve_defaults(config: TrainConfig, channels: int | None = None) -> TrainConfig:
    """``config`` with every field left None chosen by the defaults policy (the module doc), each choice and its
    reason added to ``defaults``; explicit values are kept. The one place defaults are chosen for a run:
    `inference.svi.train` calls it, and so the command line.

    ``channels``: the data's (3 for colour, which picks the levels likelihood); None reads it from
    ``config.dataset`` when it matters (a folder or array of images, no likelihood and no binarisation named).
    Idempotent: a resolved config comes back equal.
    """
    model, chosen = config.model, dict(config.defaults)
    binarize = config.binarize
    if model.own_model:  # its class decides its likelihood: only the data and the start are the policy's
        return _resolved_own_model(config, chosen)
    if model.likelihood is None:
        if config.dequantize == "uniform":
            likelihood = (DEQUANTIZED_LIKELIHOOD, "a density, under --dequantize uniform")
        elif binarize == "none" or model.mixture_components is not None:
            likelihood = (LEVELS_LIKELIHOOD, "a pmf over grey levels")
        elif binarize is None and _channels(config, channels) == 3:
            likelihood = (LEVELS_LIKELIHOOD, "a pmf over the levels of colour images")
        else:
            likelihood = ("bernoulli", "binarised grey images")
    else:
        likelihood = (model.likelihood, "")
    model = _resolved_model(model, likelihood, chosen)
    if binarize is None:
        binarize = "dynamic" if model.likelihood == "bernoulli" else "none"
        chosen["binarize"] = ("a fresh draw every batch, under the bernoulli likelihood" if binarize == "dynamic"
                              else f"the {model.likelihood} likelihood models grey levels")
    init = config.init
    if init is None:
        init = "burda2015" if model.likelihood == "bernoulli" else "as-built"
        chosen["init"] = ("Burda et al. 2015's start: Glorot weights, p(x|z) at the training images' mean pixel"
                          if init == "burda2015" else "the networks' own; burda2015 is measured under bernoulli only")
    return dataclasses.replace(config, model=model, binarize=binarize, init=init, defaults=chosen)


def _resolved_own_model(config: TrainConfig, chosen: dict[str, str]) -> TrainConfig:
    """`resolve_defaults` for a registered model of one's own (``family`` outside `FAMILIES`): the data as a model
    handed to `inference.training.train` from Python gets them (dynamic binarisation, or grey levels in [0, 1]
    under ``--dequantize uniform``), and Burda et al.'s start where the model offers it."""
    binarize, init = config.binarize, config.init
    if binarize is None:
        binarize = "none" if config.dequantize == "uniform" else "dynamic"
        chosen["binarize"] = ("a fresh draw every batch; --binarize none serves grey levels in [0, 1]"
                              if binarize == "dynamic" else "grey levels, under --dequantize uniform")
    if init is None:
        init, chosen["init"] = "burda2015", "Burda et al. 2015's start, where the model offers initialise_burda2015"
    return dataclasses.replace(config, binarize=binarize, init=init, defaults=chosen)


def _channels(config: TrainConfig, channels: int | None) -> int | None:
    """``channels``, else those of ``config.dataset``: 1 for an MNIST-family name, read from a folder or array."""
    if channels is not None or ":" not in config.dataset:
        return channels or 1
    from pyro_vae.sources import source_channels  # reads the source's first image; sources imports nothing above

    return source_channels(config.dataset, config.source_options())


#: The flag that overrides each field the policy chooses.
_DEFAULT_FLAGS = {"likelihood": "--likelihood", "binarize": "--binarize", "activation": "--activation",
                  "mixture_components": "--mixture-components", "init": "--init"}


def defaults_line(config: TrainConfig) -> str | None:
    """The one line a run says of the defaults chosen for it, or None when every choice was explicit, e.g.
    ``defaults: activation relu (under the discretized-logistic likelihood); --activation to choose``."""
    if not config.defaults:
        return None
    values = {"likelihood": config.model.likelihood, "activation": config.model.activation,
              "mixture_components": config.model.mixture_components, "binarize": config.binarize,
              "init": config.init}
    said = ", ".join(f"{name.replace('_', ' ')} {values.get(name)} ({why})" for name, why in config.defaults.items())
    flags = ", ".join(_DEFAULT_FLAGS.get(name, name) for name in config.defaults)
    return f"defaults: {said}; {flags} to choose"
