"""Command-line plumbing: user errors as one clear paragraph instead of a traceback."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

from omegaconf import DictConfig, OmegaConf

import gmlab.utils.launcher  # noqa: F401 - registers the SLURM launcher's resolvers
from gmlab.errors import GmlabError


def find_user_error(exc: BaseException) -> GmlabError | None:
    """The first `GmlabError` in an exception's cause/context chain (Hydra and Lightning
    wrap exceptions raised inside `instantiate` or a training step)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, GmlabError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def user_errors():
    """Print a `GmlabError` (also when wrapped) as `error: <message>` and exit with 1."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        user = find_user_error(exc)
        if user is None:
            raise
        print(f"\nerror: {user}", file=sys.stderr, flush=True)
        sys.exit(1)


def require_values(cfg: DictConfig) -> None:
    """Fail with one clear line if a mandatory (`???`) option was not given."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        names = ", ".join(missing)
        raise GmlabError(
            f"missing required option(s): {names}. Give them on the command line, "
            f"e.g. `{missing[0]}=...`."
        )


class _DropProductTips(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing <product>" lines (two per run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def quiet_lightning() -> None:
    """Keep two kinds of noise out of run logs (idempotent): Lightning's product
    advertisements, and torch's FutureWarning about `LeafSpec` that Lightning's own pytree
    code (not gmlab's, not the user's) triggers on every fit with torch >= 2.10."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropProductTips) for f in log.filters):
        log.addFilter(_DropProductTips())
    warnings.filterwarnings(
        "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
    )


def cpu_float_mode(cfg: DictConfig) -> bool:
    """`flush_denormal: true` (the default): subnormal floats (below 2^-126 in float32)
    become 0 on the CPU, in this thread and in the threads it starts from here on, so call
    it before the first parallel torch op. CPUs that handle subnormal operands in microcode
    run products and exp / log several times slower on them, and gmlab's log-space math
    never needs them. Returns whether the CPU could set the mode."""
    import torch

    flush = cfg.get("flush_denormal", True)
    if not isinstance(flush, bool):
        raise GmlabError(f"flush_denormal must be true or false, got {flush!r}.")
    return torch.set_flush_denormal(flush)
