"""Train a model by stochastic variational inference (Pyro's SVI) and write its run folder: config.json,
metrics.jsonl, checkpoint.pt and figures/.

The command parses its flags into a `pyro_vae.config.TrainConfig` (`config_from_args`), calls
`inference.training.train` and prints; errors, signals and out-of-memory become one line and docs/faults.md's
exit status (`pyro_vae.cli.run_command`). ``--import MODULE_OR_FILE`` imports a module of your own first, so that
``--family NAME --model-args JSON`` trains any model it registers (`models.register_model`). The training itself
(the objective, the step, checkpoints, stopping and resuming) is `inference.training`'s; see its doc.
``train`` and ``TrainResult`` stay importable from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from inference.training import TrainResult, resume_command, train
from inference.training.objectives import ELBO_NAMES, GRADIENTS
from inference.training.run_start import RESUMABLE_CHANGES, default_out
from models.guides import GUIDES
from models.likelihoods import LIKELIHOODS
from pyro_vae import checkpoint, distributed
from pyro_vae.cli import (ArgumentParser, add_import_flag, hidden_widths, import_modules, json_object, latent_sizes,
                          layer_widths, positive_int, run_command, signal_status)
from pyro_vae.config import (DEFAULT_MIXTURE_COMPONENTS, DEFAULT_PRESET, DEFAULT_PSEUDO_INPUTS, DEQUANTIZE_CHOICES,
                             DEQUANTIZED_LIKELIHOOD, FAMILIES, INITS, PRESETS, PRIORS, ModelConfig, TrainConfig,
                             obs_scale_unused)
from pyro_vae.data import BINARIZE_CHOICES, DATASETS
from pyro_vae.device import DEVICE_CHOICES
from pyro_vae.errors import CheckpointError, ConfigError, DataError
from pyro_vae.nets import ACTIVATIONS, ARCHITECTURES
from pyro_vae.schedule import BURDA2015_BATCH_SIZE, SCHEDULES, total_epochs
from pyro_vae.sources import parse_spec
from pyro_vae.stopping import interrupt_on_signals

__all__ = ["TrainResult", "build_parser", "config_from_args", "main", "train"]


def _dataset(text: str) -> str:
    """A ``--dataset`` spec, its PATH made absolute (the report and figures read it again from elsewhere)."""
    try:
        kind, path = parse_spec(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text if path is None else f"{kind}:{path.resolve()}"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m inference.svi`` parser. Every default is None: unset flags keep
    the preset's (or, with --resume, the checkpoint's) value."""
    p = ArgumentParser(prog="python -m inference.svi", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig()
    m = p.add_argument_group("model")
    m.add_argument("--preset", choices=sorted(PRESETS), help=f"published setup (default {DEFAULT_PRESET})")
    m.add_argument("--latent-dim", type=positive_int, help=f"size of z, vae family (default {d.model.z_dim})")
    m.add_argument("--hidden-dims", type=hidden_widths, help="hidden widths, encoder order, vae family, e.g. 200,200")
    m.add_argument("--activation", choices=sorted(ACTIVATIONS),
                   help="default tanh; relu under a discrete likelihood (pyro_vae.config's policy)")
    m.add_argument("--arch", choices=ARCHITECTURES, help="mlp (default, any image size) or conv (square images, even side of at least 8)")
    m.add_argument("--likelihood", choices=list(LIKELIHOODS),
                   help="p(x|z): bernoulli (default for binarised grey images); the others train on grey levels "
                        "(--binarize none by default): discretized-logistic (default for colour and --binarize none) "
                        "and beta-binomial are pmfs over the integer levels 0..2^b - 1, the others densities on [0, 1]")
    m.add_argument("--mixture-components", type=positive_int, metavar="K",
                   help=f"logistics per pixel of --likelihood discretized-logistic (default {DEFAULT_MIXTURE_COMPONENTS}; "
                        "1: the plain discretized logistic); implies that likelihood when --likelihood is not given")
    m.add_argument("--obs-scale", type=float, help="standard deviation sqrt(c) of the gaussian likelihood (default 1)")
    m.add_argument("--guide", choices=list(GUIDES), help="q(z|x): diagonal (default), full (scale_tril), iaf")
    m.add_argument("--flow-steps", type=positive_int, help="IAF transforms of --guide iaf (default 2)")
    m.add_argument("--family", metavar="NAME",
                   help="vae: one latent layer (default); hierarchical: L stochastic layers (Burda et al. 2015), "
                        "sized by --latent-dims and --layer-hidden-dims (--preset burda2015-2layer sets both); "
                        "any other registered model (mixture-prior, linear-gaussian, or one of your own made known "
                        "by --import) is built by its constructor from --model-args")
    m.add_argument("--model-args", type=json_object, metavar="JSON",
                   help="keyword arguments of a registered model's constructor, as a JSON object of plain values, "
                        "e.g. '{\"z_dim\": 16}' (with --family NAME, for a model not sized by the flags above)")
    m.add_argument("--latent-dims", type=latent_sizes, metavar="D1,D2,...",
                   help="hierarchical family: sizes of z1 (nearest the data) .. zL, e.g. 100,50")
    m.add_argument("--layer-hidden-dims", type=layer_widths, metavar="W,W/W,W",
                   help="hierarchical family: each layer's hidden widths, layers split by '/', z1's first, e.g. "
                        "200,200/100,100")
    m.add_argument("--prior", choices=PRIORS,
                   help="p(z) (the top layer's in the hierarchical family): standard N(0, I) (default), or vamp, "
                        "the VampPrior (1/K) sum_k q(z|u_k) over K learned pseudo-inputs (Tomczak & Welling 2018)")
    m.add_argument("--pseudo-inputs", type=positive_int, metavar="K",
                   help=f"pseudo-inputs of --prior vamp (default {DEFAULT_PSEUDO_INPUTS})")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=positive_int, help=f"total epochs (default {d.epochs})")
    t.add_argument("--batch-size", type=positive_int, help=f"default {d.batch_size}")
    t.add_argument("--lr", type=float, help=f"Adam step size; the base rate of --schedule (default {d.lr})")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help=f"learning rate per epoch. constant: --lr throughout (default). burda2015: Burda et al. 2015's "
                        f"protocol, 3^i epochs at --lr * 10^(-i/7) for i = 0..7, {total_epochs('burda2015'):,} epochs in "
                        f"all (its default --epochs), base --lr 0.001, Adam betas (0.9, 0.999) and eps 1e-4. The "
                        f"paper's batch is {BURDA2015_BATCH_SIZE}: pass --batch-size {BURDA2015_BATCH_SIZE} for it (the "
                        "schedule does not change the batch size)")
    t.add_argument("--elbo", choices=ELBO_NAMES,
                   help=f"trace: Trace_ELBO; meanfield: TraceMeanField_ELBO, the KL in closed form (where it is "
                        f"not the ELBO, a guide drawing a site from one the model draws it from, the default trains "
                        f"trace with a note, and --elbo meanfield is refused); iwae: RenyiELBO(alpha=0) "
                        f"(default {d.elbo})")
    t.add_argument("--gradient", choices=GRADIENTS,
                   help="gradient estimator: standard (default); stl, sticking the landing (--elbo trace); "
                        "dreg, doubly reparameterised (--elbo iwae)")
    t.add_argument("--num-particles", type=positive_int, metavar="K", help="samples per datapoint, vectorised (k of iwae)")
    t.add_argument("--kl-weight", type=float, help="beta: weight of the KL term (default 1)")
    t.add_argument("--kl-warmup", type=float, metavar="EPOCHS", help="raise the KL weight linearly from 0 over EPOCHS")
    t.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None,
                   help="JIT-compile the loss (trace, meanfield). Default: compiled when Pyro can and the compiled loss "
                        "matches the plain one on a probe batch, else plain; --jit insists, --no-jit never compiles")
    t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the compiled step (loss, backward, Adam) in a CUDA graph. Default: on CUDA, in one "
                        "process, when a replay matches the plain step on a probe batch, else uncaptured; never on "
                        "the CPU. --cuda-graph insists, --no-cuda-graph never captures")
    t.add_argument("--init", choices=INITS,
                   help="how the parameters start: burda2015, Glorot-uniform weights, zero biases and p(x|z) at the "
                        "training images' mean pixel (Burda et al. 2015's code; the default under the bernoulli "
                        "likelihood); as-built, the networks' own initialisation (the default under the others)")
    t.add_argument("--seed", type=int, help=f"training seed (default {d.seed})")
    dd = p.add_argument_group("data")
    dd.add_argument("--dataset", type=_dataset, metavar="|".join([*DATASETS, "folder:PATH", "array:PATH"]),
                    help=f"MNIST-family set, a folder of images (flat or one sub-folder per class), or a .npy/.npz "
                         f"array (default {d.dataset})")
    dd.add_argument("--image-size", type=positive_int, metavar="S",
                    help="resize (shorter side) and centre-crop every image to S x S (default: the files' own size)")
    dd.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (colour); default: the files'")
    dd.add_argument("--channels-first", action="store_true", default=None,
                    help="the array is [N, C, H, W] (default [N, H, W] or [N, H, W, C])")
    dd.add_argument("--test-fraction", type=float, metavar="F",
                    help=f"share held out as the test split when the source has none (default {d.test_fraction})")
    dd.add_argument("--split-seed", type=int, help=f"seed of that held-out split (default {d.split_seed})")
    dd.add_argument("--memory-budget", type=float, metavar="GB",
                    help="a folder whose images take more is streamed from its files (default: half the free "
                         "memory of the device or the host, whichever is less)")
    dd.add_argument("--workers", type=int, help=f"processes decoding a streamed folder (default {d.workers})")
    dd.add_argument("--binarize", choices=BINARIZE_CHOICES,
                    help="default dynamic under the bernoulli likelihood, none under the others")
    dd.add_argument("--dequantize", choices=DEQUANTIZE_CHOICES,
                    help="uniform: train a continuous likelihood on (x + u) / 2^b, u ~ U[0, 1)^D fresh every batch; "
                         "the report then bounds log P(x) of the discrete image (default none; implies "
                         f"--likelihood {DEQUANTIZED_LIKELIHOOD} when --likelihood is not given)")
    dd.add_argument("--bit-depth", type=positive_int, metavar="B",
                    help="bits per value of the files' grey levels (default: read from the files; 8 for uint8); "
                         "a run given one the files do not have is refused")
    dd.add_argument("--data-dir", help="folder holding MNIST/raw/ (default $PYRO_VAE_DATA, else ~/.cache/pyro-vae)")
    dd.add_argument("--train-limit", type=positive_int, metavar="N", help="use the first N training images")
    dd.add_argument("--test-limit", type=positive_int, metavar="N", help="use the first N test images")
    dd.add_argument("--test-seed", type=int, help=f"seed of the test split's one binarisation (default {d.test_seed})")
    r = p.add_argument_group("run")
    add_import_flag(r, "so the models it registers (@models.register_model) can be trained with --family NAME and "
                       "resumed")
    r.add_argument("--device", choices=DEVICE_CHOICES, help="auto: CUDA when present (default)")
    r.add_argument("--cuda", dest="device", action="store_const", const="cuda", help="alias of --device cuda")
    r.add_argument("--out", help="output folder (default runs/<timestamp>)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--eval-samples", type=positive_int, metavar="K",
                   help="after training, write the log p(x) report (python -m inference.evaluate) with K samples into OUT/report/")
    return p


_MODEL_FLAGS = {"latent_dim": "z_dim", "hidden_dims": "hidden_dims", "activation": "activation", "arch": "arch",
                "likelihood": "likelihood", "obs_scale": "obs_scale", "guide": "guide", "flow_steps": "flow_steps",
                "family": "family", "latent_dims": "latent_dims", "layer_hidden_dims": "layer_hidden_dims",
                "prior": "prior", "pseudo_inputs": "pseudo_inputs", "mixture_components": "mixture_components",
                "model_args": "model_args"}
_RUN_FLAGS = ("preset", "resume", "no_progress", "eval_samples", "imports")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def _resumed_config(saved: TrainConfig, given: dict, preset: str | None, path: Path) -> TrainConfig:
    """The checkpoint's config with the allowed changes in ``given``; `CheckpointError` naming any flag whose value
    differs from the run's (a flag repeated with the run's own value is fine: the same command line resumes)."""
    differing = []
    for key, value in given.items():  # the flag's value against the run's
        if key in RESUMABLE_CHANGES:
            continue
        if saved.model.own_model and key in _MODEL_FLAGS and key not in ("family", "model_args"):
            differing.append(f"{_flag(key)} (the run's model, --family {saved.model.family}, is built from "
                             "--model-args alone)")
            continue
        old = getattr(saved.model, _MODEL_FLAGS[key]) if key in _MODEL_FLAGS else getattr(saved, key)
        if value != old:
            differing.append(f"{_flag(key)} {_shown(value)} (the run's: {_shown(old)})")
    if preset is not None and preset != saved.preset:
        differing.append(f"--preset {preset} (the run's: {saved.preset})")
    if differing:
        raise CheckpointError(f"cannot resume {path} with {'; '.join(differing)}: the model and data are the "
                              "checkpoint's; only --epochs, --device, --data-dir, --jit/--no-jit, "
                              "--cuda-graph/--no-cuda-graph, --memory-budget, --workers may change")
    return dataclasses.replace(saved, **{k: v for k, v in given.items() if k in RESUMABLE_CHANGES})


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a `TrainConfig` (on --resume: the checkpoint's, with the allowed changes).

    Only maps flags to fields: a flag not given leaves its field to the preset, else to the defaults policy, which
    `inference.training.train` applies and checks (`pyro_vae.config.resolve_defaults`), so the command line and
    Python train the same model from the same explicit fields. ``--family NAME`` naming a registered model outside
    `pyro_vae.config.FAMILIES` builds it from ``--model-args`` alone (`ModelConfig.model_args`)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in _RUN_FLAGS}
    if args.resume:
        if not args.out:
            raise CheckpointError("--resume needs --out DIR, the folder of the run to continue")
        path = Path(args.out) / "checkpoint.pt"
        return _resumed_config(checkpoint.config_of(checkpoint.read(path)), given, args.preset, path)
    model_flags = {k: given.pop(k) for k in list(given) if k in _MODEL_FLAGS}  # by flag, e.g. latent_dim
    if model_flags.get("family", "vae") not in FAMILIES:
        model, preset = own_model_config(model_flags, args.preset), None
    else:
        preset = args.preset or DEFAULT_PRESET
        model = PRESETS[preset].model.changed({_MODEL_FLAGS[k]: v for k, v in model_flags.items()})
        given = {**PRESETS[preset].train, **given}
        if args.obs_scale is not None and model.likelihood not in (None, "gaussian"):  # given at all, even as 1
            raise ConfigError(obs_scale_unused(model.likelihood))
    if total_epochs(given.get("schedule", "constant")):
        given.setdefault("epochs", total_epochs(given["schedule"]))  # the protocol's length, unless --epochs says
    given.setdefault("out", default_out())
    return TrainConfig(model=model, preset=preset, **given)


def own_model_config(model_flags: dict, preset: str | None) -> ModelConfig:
    """The `ModelConfig` of ``--family NAME --model-args JSON`` (``model_flags``: the model flags given, by name)
    for a registered model outside the families the flags size; `ConfigError` naming a flag of those families
    given with it."""
    family = model_flags["family"]
    sizing = [_flag(k) for k in model_flags if k not in ("family", "model_args")] + (
        [f"--preset {preset}"] if preset else [])
    if sizing:
        raise ConfigError(f"{', '.join(sizing)} {'sets' if len(sizing) == 1 else 'set'} the {'/'.join(FAMILIES)} "
                          f"families; --family {family} is built by its constructor from --model-args alone: drop "
                          f"{'it' if len(sizing) == 1 else 'them'}, or put the constructor's arguments in --model-args")
    return ModelConfig(family=family, model_args=model_flags.get("model_args", {}))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m inference.svi`` (also under ``torchrun``); returns the exit status
    (`pyro_vae.cli.run_command`; 128 + the signal number when SIGINT/SIGTERM stopped it, checkpoint written).
    Under ``torchrun`` rank 0 alone prints; the others return the same status."""
    args = build_parser().parse_args(argv)
    out: list[Path] = []

    def unfinished() -> str:
        have = out and (out[0] / "checkpoint.pt").exists()
        return f"{out[0] / 'checkpoint.pt'} is the last checkpoint written" if have else "no checkpoint was written"

    def command() -> int:
        import_modules(args.imports)
        config = config_from_args(args)
        out.append(Path(config.out))
        result = train(config, resume=args.resume, progress=not args.no_progress, elbo_chosen=args.elbo is not None)
        say = print if not distributed.quiet_rank() else (lambda *a, **k: None)
        if result.interrupted:
            epoch, step = result.position
            say(f"interrupted at epoch {epoch + 1}, step {step}; checkpoint written to "
                f"{result.out_dir / 'checkpoint.pt'}\nresume with: {resume_command(result.out_dir, result.model)}")
            return signal_status(result.stop_signal)
        say(f"done: {result.out_dir} (config.json, metrics.jsonl, checkpoint.pt, figures/)")
        if result.stop_signal is not None:  # asked to stop as the last step finished: no report
            say("stopped by a signal after the last step; training is complete, the report was not written")
            return signal_status(result.stop_signal)
        if args.eval_samples:
            from inference.reports.report import EvaluateConfig, evaluate, render_markdown  # the report, only if asked

            with interrupt_on_signals():
                report = evaluate(result.out_dir, EvaluateConfig(num_samples=args.eval_samples,
                                                                 chunk_size=min(args.eval_samples, 500),
                                                                 test_limit=result.config.test_limit,
                                                                 device=result.config.device,
                                                                 data_dir=result.config.data_dir),
                                  progress=not args.no_progress)
            say(render_markdown(report))
        return 0

    return run_command(command, memory_fix="use a smaller model, batch or --num-particles", unfinished=unfinished)


if __name__ == "__main__":
    sys.exit(main())
