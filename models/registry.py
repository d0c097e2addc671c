"""The names a checkpoint may use for a model class, and building a model from one safely.

A checkpoint is untrusted input: it names its model by a registered name
(``"vae"``), never by an import path, and nothing in it chooses code to run.
A class enters the registry only through `register_model`, and only if it is a
`models.base.LatentModel`; `build_model` looks the name up, checks the stored
constructor arguments against the constructor's signature (names and types),
and only then calls it. A user's variant registers itself the same way::

    @register_model("my-vae")
    class MyVAE(VAE):
        ...

Its module must be imported before a checkpoint of it is loaded (importing
it is what registers it): from Python, import it; on a command line, ``--import MODULE_OR_FILE``
(`pyro_vae.cli.import_modules`). `import_hint` says what another process must import.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

from models.base import LatentModel
from pyro_vae.config import is_finite_number, is_plain_value
from pyro_vae.errors import CheckpointError, ConfigError

_BY_NAME: dict[str, type[LatentModel]] = {}
_NAME_OF: dict[type[LatentModel], str] = {}

M = TypeVar("M", bound=type[LatentModel])


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: checkpoints may name this `LatentModel` subclass as ``name``.

    Re-registering the same class under the same name is allowed (a module
    imported twice); another class under a taken name is a `ConfigError`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a model's registered name must be a non-empty string, got {name!r}")

    def decorate(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, LatentModel)):
            raise ConfigError(f"register_model({name!r}) takes a models.base.LatentModel subclass, got {cls!r}")
        taken = _BY_NAME.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise ConfigError(f"the model name {name!r} is taken by {_qualified(taken)}; register {_qualified(cls)} "
                              "under another name")
        _NAME_OF.pop(taken, None)
        _BY_NAME[name] = cls
        _NAME_OF[cls] = name
        return cls

    return decorate


def registered_models() -> dict[str, type[LatentModel]]:
    """Registered name -> class (a copy)."""
    return dict(_BY_NAME)


def name_of(model: LatentModel | type[LatentModel]) -> str:
    """The registered name of ``model``'s exact class; `ConfigError` if it has none.

    A subclass does not inherit its parent's name: rebuilding it as the parent
    would lose what it changed.
    """
    cls = model if isinstance(model, type) else type(model)
    if cls not in _NAME_OF:
        raise ConfigError(f"{_qualified(cls)} is not a registered model, so a checkpoint could not rebuild it; "
                          "decorate the class with @models.register_model(\"some-name\")")
    return _NAME_OF[cls]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def model_class(name: Any, *, legacy_path: bool = False) -> type[LatentModel]:
    """The registered class named ``name``; `CheckpointError` for anything else.

    ``legacy_path``: ``name`` is a format-1 checkpoint's ``"module:QualName"``,
    matched against the registered classes' own paths (nothing is imported).
    """
    if isinstance(name, str):
        if legacy_path:
            found = next((cls for cls in _BY_NAME.values() if _qualified(cls) == name), None)
        else:
            found = _BY_NAME.get(name)
        if found is not None and issubclass(found, LatentModel):
            return found
    known = ", ".join(sorted(_BY_NAME)) or "none"
    raise CheckpointError(f"the checkpoint names model {name!r}, which is not a registered model (registered: {known}); "
                          "nothing was loaded. A model of your own: pass --import MODULE_OR_FILE, the module that "
                          "registers it (@models.register_model), or import it before loading from Python")


#: Top-level packages whose models every process knows without ``--import``.
_SHIPPED = ("models", "pyro_vae", "inference")


def import_hint(model: LatentModel | type[LatentModel]) -> tuple[str, ...]:
    """What ``--import`` needs to make ``model``'s class known in another process: () for a shipped model, or one
    defined where no other process can import it (``__main__``, a notebook); else its module's file (a module
    imported by its path) or its dotted name (a module of a package). For the ``resume with: ...`` lines."""
    cls = model if isinstance(model, type) else type(model)
    name = cls.__module__
    module = sys.modules.get(name)
    if module is None or name == "__main__" or name.split(".")[0] in _SHIPPED:
        return ()
    file = getattr(module, "__file__", None)
    return (name,) if "." in name or not file else (str(file),)


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword parameters ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy.

    A subclass written ``__init__(self, *args, extra=1, **kwargs)`` that passes
    the rest to ``super().__init__`` accepts its own keywords and its parent's.
    """
    accepted: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (LatentModel, torch.nn.Module, object):
            continue
        signature = inspect.signature(klass.__init__)
        params = list(signature.parameters.values())[1:]  # drop self
        try:
            hints = typing.get_type_hints(klass.__init__)
        except Exception:  # noqa: BLE001 - an annotation that does not resolve: check names only
            hints = {}
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in accepted:
                accepted[p.name] = p.replace(annotation=hints.get(p.name, inspect.Parameter.empty))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return accepted


def check_init_kwargs(cls: type, kwargs: Any, given_by: str = "the checkpoint",
                      error: type[Exception] = CheckpointError) -> dict[str, Any]:
    """``kwargs`` if they fit ``cls``'s constructor (known names, annotated types), else ``error`` naming what
    ``given_by`` (``"the checkpoint"``, ``"--model-args"``) got wrong."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise error(f"{given_by}'s model arguments must be a mapping of names to values, got {type(kwargs).__name__}")
    accepted = constructor_parameters(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise error(f"{given_by} gives {cls.__name__} arguments it does not take: {', '.join(unknown)} "
                    f"(it takes {', '.join(accepted)})")
    missing = sorted(n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in kwargs)
    if missing:
        raise error(f"{given_by} lacks {cls.__name__} arguments: {', '.join(missing)}")
    for name, value in kwargs.items():
        hint = accepted[name].annotation
        if not _fits(value, hint):
            want = "plain data" if hint is inspect.Parameter.empty else _hint_name(hint)
            raise error(f"{given_by}'s model argument {name}={value!r} is not {want}")
    return kwargs


def _hint_name(hint: Any) -> str:
    if typing.get_args(hint):  # tuple[float, ...], int | None: the written form
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint)


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from a checkpoint or ``--model-args``: JSON-like data) is of the annotated type ``hint``.

    Understood: int, float, bool, str, None, ``Literal[...]``, lists, sequences and tuples of those (a tuple of
    fixed length checked element by element), unions; without an annotation only plain data (no tensors, no
    other objects, `pyro_vae.config.is_plain_value`) fits.
    """
    if hint is inspect.Parameter.empty or hint is Any:
        return is_plain_value(value)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return is_finite_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence) or hint in (tuple, list, Sequence):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and Ellipsis not in args:  # tuple[int, str]: that many, each its own type
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        element = next((a for a in args if a is not Ellipsis), None)
        return all(_fits(v, element) for v in value) if element is not None else is_plain_value(value)
    return False  # an annotation this check does not know: refuse rather than pass anything through


def build_model(name: Any, kwargs: Any, state: Any, *, legacy_path: bool = False) -> LatentModel:
    """Construct the registered model ``name`` from checked ``kwargs`` and load ``state`` (its parameters).

    The model is first built on PyTorch's ``meta`` device (shapes only, no
    memory), so arguments that would ask for more memory than the stored
    parameters hold are refused before anything is allocated (a class whose
    constructor cannot run on ``meta``, like the IAF guide's, is built for
    real instead and only its shapes are compared); ``state`` must
    have exactly the model's keys and shapes, as dense, real, finite tensors.
    Raises `CheckpointError` naming the problem; nothing from the checkpoint
    decides what code runs.
    """
    cls = model_class(name, legacy_path=legacy_path)
    kwargs = check_init_kwargs(cls, kwargs)
    check_tensors(state)
    try:
        with torch.device("meta"):
            skeleton, on_meta = cls(**kwargs), True
    except Exception:  # noqa: BLE001 - a constructor that cannot run on meta (Pyro's IAF nets call .item()):
        skeleton, on_meta = _construct(cls, kwargs), False  # build it for real; its arguments were type-checked
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        resized = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        details = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                ("other shape", resized)) if keys)
        raise CheckpointError(f"the checkpoint's parameters do not fit {cls.__name__}({', '.join(map(str, kwargs))}=...) "
                              f"({details})")
    model = _construct(cls, kwargs) if on_meta else skeleton  # a real skeleton is the model already
    model.load_state_dict(state)
    return model


def _construct(cls: type[LatentModel], kwargs: dict[str, Any]) -> LatentModel:
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - our own constructor refusing the stored values
        message = " ".join(str(e).split())[:200]
        raise CheckpointError(f"the checkpoint's arguments do not build {cls.__name__}: {type(e).__name__}: {message}") from None


def check_rebuildable(model: LatentModel) -> None:
    """`ConfigError` unless a checkpoint of ``model`` could rebuild it: its class is registered, and what its
    ``init_kwargs()`` returns passes the same check a checkpoint's arguments get when loaded (`check_init_kwargs`).
    Asked before a run trains, so that a run is never written that cannot be resumed or evaluated."""
    name_of(model)
    cls, kwargs = type(model), model.init_kwargs()
    try:
        check_init_kwargs(cls, kwargs, f"{cls.__name__}.init_kwargs()", ConfigError)
    except ConfigError as e:
        raise ConfigError(f"{e}; a checkpoint of it could not be rebuilt: init_kwargs() must return the "
                          "constructor's arguments as plain values of their annotated types") from None
    try:
        with torch.device("meta"):  # shapes only: nothing allocated
            cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - loading builds it so; a constructor that cannot run on meta is not tried
        if not isinstance(e, (TypeError, KeyError, ValueError)):
            return
        raise ConfigError(f"{cls.__name__}(**init_kwargs()) fails ({type(e).__name__}: {' '.join(str(e).split())[:160]}"
                          "); a checkpoint of it could not be rebuilt: init_kwargs() must return the constructor's "
                          "arguments") from None


def checked_class(name: str, kwargs: dict[str, Any]) -> type[LatentModel]:
    """The registered class ``name`` if ``kwargs`` fit its constructor (``--family NAME --model-args JSON``, checked
    before any data are read); `ConfigError` in one line for a name no imported module registered, or arguments
    that do not fit."""
    cls = _BY_NAME.get(name)
    if cls is None:
        raise ConfigError(f"--family {name} is not a registered model (registered: {', '.join(sorted(_BY_NAME))}); a "
                          "model of your own: pass --import MODULE_OR_FILE, the module that registers it "
                          "(@models.register_model)")
    check_init_kwargs(cls, kwargs, "--model-args", ConfigError)
    return cls


def construct(name: str, kwargs: dict[str, Any]) -> LatentModel:
    """A fresh registered model ``name`` built as ``cls(**kwargs)``, its arguments checked first (`checked_class`);
    `ConfigError` in one line also for a constructor that refuses them."""
    cls = checked_class(name, kwargs)
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's constructor refusing the values given
        raise ConfigError(f"--model-args do not build {cls.__name__}: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}") from None


def check_tensors(state: Any) -> None:
    """`CheckpointError` unless ``state`` maps names to dense real tensors with no NaN or inf (named if any)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError("the checkpoint's parameters are not a mapping of names to tensors")
    for key, value in state.items():
        if value.layout != torch.strided or value.is_complex():
            raise CheckpointError(f"the checkpoint's parameter {key} is not a dense real tensor ({value.layout}, {value.dtype})")
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"the checkpoint's parameter {key} holds {bad} NaN or infinite values; the file is "
                                  "damaged or was written by a run that diverged: use an earlier checkpoint")
