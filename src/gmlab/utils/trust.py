"""What a config read from a file may build: the one allowlist of gmlab's file readers.

A checkpoint or a stored run config may come from a stranger. gmlab reads it with
`torch.load(weights_only=True)`, which unpickles no code, but its configs name classes by
`_target_`, and Hydra's `instantiate` would build any of them, at any depth. So before
anything in such a config is built, every `_target_` in it must name

- a class defined in gmlab that is a part, a model or a datamodule (a subclass of
  `torch.nn.Module`, `torch.optim.Optimizer`, a torch lr scheduler or
  `LightningDataModule`), or one of gmlab's part factories (`FACTORIES`);
- a torch optimizer or lr scheduler class (`torch.optim.*`);
- or anything under a prefix the user trusts (`trusted_targets=[mypkg.]` on the command
  line, `load_model(path, trusted_targets=["mypkg."])` in Python).

Interpolations (`${...}`) in a stored config are refused as well: resolving one runs a
resolver. Configs the user writes (the command line, `conf/`, a `hydra.searchpath`
folder) are the user's own and are not checked. See docs/security.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from gmlab.errors import UntrustedFileError

# module-name prefixes a stored `_target_` may name without the user's opt-in
BUILTIN_PREFIXES = ("gmlab.", "torch.optim.")
# functions (not classes) a stored config may call: gmlab's part factories
FACTORIES = frozenset({"gmlab.nn.flows.realnvp.build_realnvp"})
# where a stored checkpoint's model class may come from without the user's opt-in
MODEL_PREFIX = "gmlab.models."

_trusted: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "gmlab_trusted_targets", default=()
)


@contextlib.contextmanager
def trusting(prefixes: Iterable[str] | None) -> Iterator[None]:
    """Within the block, stored configs may also name anything under `prefixes` (module
    name prefixes such as "mypkg." or "mypkg.parts.MyPrior"): the `trusted_targets` option
    of gmlab-train / gmlab-eval."""
    extra = _prefixes(prefixes)
    token = _trusted.set(_trusted.get() + extra)
    try:
        yield
    finally:
        _trusted.reset(token)


def _prefixes(prefixes: Iterable[str] | None) -> tuple[str, ...]:
    if prefixes is None:
        return ()
    if isinstance(prefixes, str):
        prefixes = [prefixes]
    out = []
    for prefix in prefixes:
        if not isinstance(prefix, str) or not prefix.strip("."):
            raise UntrustedFileError(
                f"trusted_targets must be a list of module prefixes such as [mypkg.], got "
                f"{prefix!r}"
            )
        out.append(prefix)
    return tuple(out)


def is_trusted(name: str, extra: Sequence[str] = ()) -> bool:
    """Whether the user trusts everything under `name` (a `trusted_targets` prefix)."""
    return any(name.startswith(p) for p in (*_trusted.get(), *extra))


def _refuse(source: str | Path, key: str, what: str, why: str) -> UntrustedFileError:
    top = what.split(".")[0] if isinstance(what, str) and what else "<package>"
    return UntrustedFileError(
        f"{source}: {key} names {what!r}, {why}. A file gmlab reads may only build gmlab's "
        "parts, models and datamodules and torch's optimizers and lr schedulers. If you "
        f"trust this file, allow the name with trusted_targets=[{top}.] (gmlab-train, "
        "gmlab-eval) or load_model(path, trusted_targets=[...]); see docs/security.md."
    )


def _locate(name: str):
    """The object `name` (a dotted path) names. Imports only the modules along that path,
    which `check_target` has limited to gmlab's and torch's own."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def _allowed_object(obj) -> bool:
    import lightning as L
    import torch

    module = getattr(obj, "__module__", "") or ""
    if not isinstance(obj, type):
        return f"{module}.{getattr(obj, '__qualname__', '')}" in FACTORIES
    optim = (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)
    if module.startswith("torch.optim."):
        return issubclass(obj, optim)
    return module.startswith("gmlab.") and issubclass(
        obj, (*optim, torch.nn.Module, L.LightningDataModule)
    )


def check_target(target, source: str | Path, key: str, extra: Sequence[str] = ()) -> None:
    """Raise `UntrustedFileError` unless a stored config may build `target` (module doc).
    The name is checked before any import; only gmlab's and torch's modules are imported
    to see what it names."""
    if not isinstance(target, str) or not target:
        raise _refuse(source, key, str(target), "which is not a class path")
    if is_trusted(target, extra):
        return
    if not target.startswith(BUILTIN_PREFIXES):
        raise _refuse(source, key, target, "which is outside gmlab and torch.optim")
    try:
        obj = _locate(target)
    except (ImportError, AttributeError):
        raise _refuse(source, key, target, "which names nothing in gmlab or torch.optim") from None
    if not _allowed_object(obj):
        raise _refuse(source, key, target, "which is not a gmlab part, model or datamodule")


def check_stored_config(tree, source: str | Path, key: str = "", extra: Sequence[str] = ()) -> None:
    """Check every `_target_` of a config read from a file, at every depth (dicts and
    lists), and refuse interpolations; raises `UntrustedFileError` naming the file and key.

    >>> check_stored_config({"optimizer": {"_target_": "torch.optim.Adam"}}, "a.ckpt")
    >>> check_stored_config({"prior": {"_target_": "numpy.load"}}, "a.ckpt")
    Traceback (most recent call last):
    gmlab.errors.UntrustedFileError: a.ckpt: prior._target_ names 'numpy.load', which is outside...
    >>> with trusting(["numpy."]):  # the user's opt-in: trusted_targets=[numpy.]
    ...     check_stored_config({"prior": {"_target_": "numpy.load"}}, "a.ckpt")
    """
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            path = f"{key}.{name}" if key else str(name)
            if name == "_target_":
                check_target(value, source, path, extra)
            else:
                check_stored_config(value, source, path, extra)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            check_stored_config(value, source, f"{key}[{i}]", extra)
    elif isinstance(tree, str) and "${" in tree:
        raise UntrustedFileError(
            f"{source}: {key} holds the interpolation {tree!r}; a file gmlab reads may not "
            "hold interpolations, since resolving one runs a resolver (docs/security.md)."
        )


def check_model_class(name, source: str | Path, extra: Sequence[str] = ()) -> None:
    """Refuse a recorded model class outside `gmlab.models` (and the trusted prefixes),
    as a name, before its module is imported."""
    if not isinstance(name, str) or not name:
        raise _refuse(source, "gmlab.class", str(name), "which is not a class path")
    if not (name.startswith(MODEL_PREFIX) or is_trusted(name, extra)):
        raise _refuse(source, "gmlab.class", name, "which is not a gmlab model class")
