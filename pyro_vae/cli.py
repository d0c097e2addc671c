"""What every command line here shares: a parser whose errors are one line, the argument types, and
`run_command`, which turns what a command's body raises into one line on stderr and docs/faults.md's exit status:

- 0: done;
- 2: bad input (`pyro_vae.errors.PyroVAEError`, a bad flag), another process writing the folder, out of memory;
- 1: a file that could not be written (`pyro_vae.errors.WriteFailed`);
- 128 + N: stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).

A command line only parses, calls the library and prints; the library raises and never exits.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

from pyro_vae import distributed
from pyro_vae.config import MAX_NESTING, is_plain_value
from pyro_vae.errors import ConfigError, PyroVAEError
from pyro_vae.stopping import Interrupted


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``error: ...`` (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def error(problem: object) -> int:
    """Print ``error: PROBLEM`` as one line on stderr (any line breaks in it folded) and return its exit status:
    2 (bad input), or the error's own ``exit_status`` (1 for a file that could not be written,
    `pyro_vae.errors.WriteFailed`)."""
    print("error: " + " ".join(str(problem).split()), file=sys.stderr)
    return exit_status(problem)


def signal_status(signum: int | None) -> int:
    """The shell's exit status after signal ``signum`` stopped the work (128 + N: 130 for SIGINT, 143 for SIGTERM);
    0 for None."""
    return 0 if signum is None else 128 + signum


def exit_status(problem: object) -> int:
    """The exit status of an error: its ``exit_status`` attribute, else 2."""
    return getattr(problem, "exit_status", 2)


def run_command(body: Callable[[], int | None], *, memory_fix: str,
                unfinished: Callable[[], str] = lambda: "nothing was finished") -> int:
    """Run a command's ``body`` and return its exit status (None counts as 0), or the one-line error's.

    ``memory_fix``: what to lower when memory runs out (``"lower --chunk-size or --batch-size"``);
    ``unfinished()``: what a signal that stopped the body at once left (``"the report was not finished"``),
    asked only then. Under ``torchrun`` rank 0 alone prints (every rank meets the same error,
    `pyro_vae.distributed.together`), and the process group is left however the body ended. Any other
    exception is a bug and keeps its traceback.
    """
    try:
        return body() or 0
    except PyroVAEError as e:
        return exit_status(e) if distributed.quiet_rank() else error(e)
    except KeyboardInterrupt as e:  # a signal while stopping was armed (Interrupted), or Ctrl-C before it was
        stopped = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        if not distributed.quiet_rank():
            print(f"error: stopped by {stopped}; {unfinished()}", file=sys.stderr)
        return stopped.exit_status
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError and the CPU allocator's are RuntimeErrors
        if isinstance(e, RuntimeError) and "alloc" not in str(e).lower():
            raise
        return error(f"out of memory ({' '.join(str(e).split())[:160]}); {memory_fix}")
    finally:
        distributed.shutdown()


def _int_at_least(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _int_at_least(text, 0, "non-negative")


def _sizes(text: str, flag: str, example: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated positive integers like {example}, "
                                         f"got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{flag} takes comma-separated positive integers like {example}, got {text!r}")
    return sizes


def hidden_widths(text: str) -> tuple[int, ...]:
    """argparse type of ``--hidden-dims``: ``200,200`` -> (200, 200)."""
    return _sizes(text, "--hidden-dims", "200,200")


def latent_sizes(text: str) -> tuple[int, ...]:
    """argparse type of ``--latent-dims``: ``100,50`` -> (100, 50)."""
    return _sizes(text, "--latent-dims", "100,50")


def layer_widths(text: str) -> tuple[tuple[int, ...], ...]:
    """argparse type of ``--layer-hidden-dims``: layers split by ``/``, ``200,200/100,100`` -> ((200, 200), (100, 100))."""
    return tuple(_sizes(layer, "--layer-hidden-dims", "200,200/100,100 (layers split by '/')")
                 for layer in text.split("/"))


def add_import_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                    why: str = "so the models it registers (@models.register_model) can be loaded") -> None:
    """``--import MODULE_OR_FILE`` (repeatable), read into ``args.imports`` (None when not given); `import_modules`
    acts on it. ``why``: what importing does for this command, for its help."""
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE_OR_FILE",
                        help=f"import a module on sys.path (my_models) or a .py file (path/to/my_models.py) first, "
                             f"{why}; repeatable")


def import_modules(specs: Sequence[str] | None) -> list[ModuleType]:
    """Import each of ``specs`` in order: a module name on ``sys.path``, or the path of a ``.py`` file (imported
    under its file's stem, its folder added at the end of ``sys.path`` so it can import its neighbours). What the
    user types is the only thing that chooses code here. `ConfigError` in one line when one cannot be imported, or
    raises or exits while it is; a file whose stem names another importable module (``json.py``,
    ``matplotlib.py``) is refused, as it would hide that module from everything imported after it."""
    return [_import_one(spec) for spec in specs or ()]


def _import_one(spec: str) -> ModuleType:
    if not spec.strip():
        raise ConfigError("--import needs a module name or the path of a .py file, got an empty one")
    try:
        if spec.endswith(".py") or "/" in spec or "\\" in spec:
            return _import_file(spec)
        return importlib.import_module(spec)
    except ConfigError:
        raise
    except SystemExit as e:  # the module called sys.exit(): not an exit status of ours to pass on
        raise ConfigError(f"--import {spec} exited while it was imported (SystemExit: {e.code!r})") from None
    except ModuleNotFoundError as e:
        where = f"no module named {e.name!r}" if e.name else " ".join(str(e).split())
        raise ConfigError(f"--import {spec}: {where} (a module on sys.path, or the path of a .py file)") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported
        raise ConfigError(f"--import {spec} failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def _import_file(spec: str) -> ModuleType:
    """The ``.py`` file ``spec`` imported under its stem (the one already imported, if it is that file)."""
    path = Path(spec).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(f"--import {spec} is a folder; give a .py file, or a package by its module name on sys.path")
    if not path.is_file():
        raise ConfigError(f"--import {spec}: no such file")
    if path.suffix != ".py":
        raise ConfigError(f"--import {spec} is not a .py file")
    name = path.stem
    if not name.isidentifier():
        raise ConfigError(f"--import {spec}: {name!r} is not a module name; rename the file")
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    other = loaded.__spec__ if loaded is not None else importlib.util.find_spec(name)
    if loaded is not None or (other is not None and Path(other.origin or "").resolve() != path):
        raise ConfigError(f"--import {spec}: its name {name!r} is another module's "
                          f"({getattr(other, 'origin', None) or 'built in'}), which it would hide; rename the file")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    added = str(path.parent) not in sys.path
    if added:
        sys.path.append(str(path.parent))
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:  # leave no trace of a module that did not import
        sys.modules.pop(name, None)
        if added:
            sys.path.remove(str(path.parent))
        raise
    return module


def json_object(text: str) -> dict[str, Any]:
    """argparse type of ``--model-args``: a JSON object of plain values (null, true/false, finite numbers,
    strings, and lists of them): keyword arguments of a registered model's constructor."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a finite number")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} given twice")
        return dict(pairs)

    try:
        value = json.loads(text, parse_constant=refuse, object_pairs_hook=unique)
    except RecursionError:
        raise argparse.ArgumentTypeError(f"lists nested deeper than {MAX_NESTING}") from None
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"z_dim\": 16}}' "
                                         f"({' '.join(str(e).split())})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"z_dim\": 16}}', got "
                                         f"{type(value).__name__} {text!r}")
    bad = sorted(k for k, v in value.items() if not is_plain_value(v))
    if bad:
        raise argparse.ArgumentTypeError(f"values must be null, true/false, numbers, strings or lists of them nested "
                                         f"at most {MAX_NESTING} deep; {', '.join(bad)} "
                                         f"{'is' if len(bad) == 1 else 'are'} not")
    return value
