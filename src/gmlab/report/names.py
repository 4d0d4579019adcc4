"""Names given to gmlab-report's options (`--metrics`, `--sort`, `--group-by`) that match
nothing the runs recorded: one `ConfigError` naming the option, the nearest names
(`difflib`) and the accepted ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from gmlab.errors import ConfigError

MAX_LISTED = 15


def unknown_name(
    option: str, name: str, what: str, known: Iterable[str], listed: Iterable[str] | None = None
) -> ConfigError:
    """The error for `option name` that matches no `known` name; it lists `listed`
    (default: `known`), at most MAX_LISTED of them."""
    known = sorted(set(known))
    shown = sorted(set(listed)) if listed is not None else known
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    more = f", ... ({len(shown)} in all)" if len(shown) > MAX_LISTED else ""
    accepted = ", ".join(shown[:MAX_LISTED]) + more if shown else "none"
    return ConfigError(f"{option} {name!r} {what}.{hint} Accepted: {accepted}.")
