"""Command-line plumbing: user errors as one clear paragraph instead of a traceback, and
the entry points' command line checked before Hydra runs it (`gmlab_main`)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import itertools
import logging
import re
import sys
import warnings
from collections.abc import Callable

from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import gmlab.utils.launcher  # noqa: F401 - registers the SLURM launcher's resolvers
from gmlab.errors import ConfigError, GmlabError


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


# Hydra's message for a key override of a key the config lacks
_UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")


def gmlab_main(config_name: str) -> Callable:
    """`hydra.main` over `conf/<config_name>.yaml` whose command line is checked first
    (`check_command_line`): a bad override is one `error:` paragraph, exit status 1."""
    import hydra

    from gmlab.utils.runs import PROJECT_ROOT

    def decorate(task: Callable) -> Callable:
        conf = str(PROJECT_ROOT / "conf")
        hydra_task = hydra.main(version_base="1.3", config_path=conf, config_name=config_name)(task)

        @functools.wraps(task)
        def main(cfg_passthrough: DictConfig | None = None):
            if cfg_passthrough is None:
                with user_errors():
                    sys.argv[1:] = check_command_line(config_name, sys.argv[1:], conf)
            return hydra_task(cfg_passthrough)

        return main

    return decorate


def check_command_line(config_name: str, argv: list[str], conf: str) -> list[str]:
    """Check a Hydra entry point's command line `argv` against the configs in `conf`;
    raise `ConfigError` for what Hydra would refuse with a message of its own or a
    traceback:

    - every job's config must compose: the one run, or in a multirun each choice of the
      config groups it sweeps (`-m model=vae,vae_mog`; other sweeps with their first value,
      sweeps that cannot be listed, such as `interval(...)`, left out). An unknown key names
      the nearest existing ones;
    - the run folder (`hydra.run.dir`, a multirun's `hydra.sweep.dir`) must be writable.

    Returns `argv`, where a multirun's key override that every job's config has and the
    default config lacks is written `++key=value`: Hydra checks a sweep's key overrides
    against the config of the default choices (`model=mfa` has no `model.eval.iwae_k`) before
    it composes the jobs. Help, info and completion requests and commands with a config
    folder of their own (`--config-path`, `--config-dir`) are passed on unchecked.
    """
    from hydra import initialize_config_dir
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from gmlab.utils.options import check_output_dir

    args = get_args_parser().parse_args(argv)
    unchecked = (args.help, args.hydra_help, args.info, args.shell_completion, args.config_dir)
    if any(unchecked) or args.config_path or args.experimental_rerun:
        return argv
    name, overrides = args.config_name or config_name, list(args.overrides)
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
        except OverrideParseException as exc:
            raise ConfigError(f"cannot read the override {exc.override}: {exc}") from None
        sweeps = any(override.is_sweep_override() for override in parsed)
        multirun = args.multirun or (sweeps and _mode(loader, name, overrides) == RunMode.MULTIRUN)
        for label, job in _jobs(loader, parsed) if multirun else [("", overrides)]:
            cfg = _compose(loader, name, job, label)
        forced = _forced(loader, name, overrides) if multirun else {}
    if args.cfg is None:
        sweep = multirun or cfg.hydra.mode == RunMode.MULTIRUN
        folder = "hydra.sweep.dir" if sweep else "hydra.run.dir"
        try:
            path = OmegaConf.select(cfg, folder)
        except OmegaConfBaseException:  # `${hydra:...}` resolves only inside Hydra's run
            path = None
        if path:
            check_output_dir(path, folder)
    return [forced.get(arg, arg) for arg in argv]


def _mode(loader, name: str, overrides: list[str]) -> RunMode | None:
    """`hydra.mode` of the composed config (a sweeper's config sets MULTIRUN), as Hydra
    reads it before it starts; None when the config does not compose."""
    try:
        cfg = loader.load_configuration(
            name, overrides, RunMode.MULTIRUN, validate_sweep_overrides=False
        )
    except HydraException:
        return None
    return cfg.hydra.mode


def _jobs(loader, parsed: list) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each combination of the swept config-group choices; other
    sweeps take their first value; sweeps that cannot be listed are left out."""
    fixed, groups = [], []
    for override in parsed:
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        try:
            values = [f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()]
        except HydraException:
            continue
        parent, _, group = override.key_or_group.rpartition("/")
        if group in loader.list_groups(parent):
            groups.append(values)
        else:
            fixed.append(values[0])
    return [(" ".join(combo), fixed + list(combo)) for combo in itertools.product(*groups)]


def _compose(loader, name: str, overrides: list[str], label: str = "") -> DictConfig:
    """The config of one job (in RUN mode, as Hydra composes a job), or a ConfigError; for
    unknown keys, one line each with the nearest options of the config without them."""
    try:
        return loader.load_configuration(name, overrides, RunMode.RUN)
    except HydraException as exc:
        error = exc
    where = f" (in the sweep's job {label})" if label else ""
    unknown, cfg = [], None
    while cfg is None and (key := _unknown_key(error)) is not None:
        unknown.append(key)
        overrides = [o for o in overrides if o.split("=", 1)[0] != key]
        try:
            cfg = loader.load_configuration(name, overrides, RunMode.RUN)
        except HydraException as exc:
            error = exc
    if not unknown:
        message = str(error).split("\nConfig search path:")[0]
        raise ConfigError(f"{message}{where}")
    lines = [_unknown_key_message(key, cfg, where) for key in unknown]
    lines.append("(key=value sets an option of the config; +key=value adds a new one)")
    raise ConfigError("\n".join(lines))


def _unknown_key(exc: BaseException) -> str | None:
    """The key of Hydra's "Could not override" error for a key the config lacks."""
    match = _UNKNOWN_KEY.match(str(exc))
    return match.group(1) if match and "not in" in str(exc.__cause__) else None


def _forced(loader, name: str, overrides: list[str]) -> dict[str, str]:
    """{override: ++override} for the key overrides that the multirun's default config
    lacks (every job's config has them: `_jobs` composed them all)."""
    forced: dict[str, str] = {}
    while True:
        try:
            loader.load_configuration(name, [forced.get(o, o) for o in overrides], RunMode.MULTIRUN)
            return forced
        except HydraException as exc:
            key = _unknown_key(exc)
            line = next(
                (o for o in overrides if o.split("=", 1)[0] == key and o not in forced), None
            )
            if line is None:
                raise ConfigError(str(exc)) from None
            forced[line] = f"++{line}"


def _option_names(cfg: DictConfig, with_hydra: bool = False) -> list[str]:
    """Every key of `cfg` as a dotted path (nodes and leaves; `hydra.*` only if asked)."""
    tree = OmegaConf.to_container(cfg, resolve=False)
    if not with_hydra:
        tree.pop("hydra", None)
    names: list[str] = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            names.append(f"{prefix}{key}")
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(tree, "")
    return names


def _unknown_key_message(key: str, cfg: DictConfig | None, where: str = "") -> str:
    """`<key> is not an option`, with the nearest existing options of `cfg` (difflib), or
    else the options of its nearest existing parent node."""
    hint = ""
    if cfg is not None:
        names = _option_names(cfg, with_hydra=key.startswith("hydra."))
        near = difflib.get_close_matches(key, names, n=3, cutoff=0.75)
        parent = next((p for p in _parents(key) if p in names), "")
        children = [name.rpartition(".") for name in names]
        siblings = [leaf for up, _, leaf in children if up == parent and leaf[:1] != "_"]
        if near:
            hint = f": did you mean {' or '.join(near)}?"
        elif siblings:
            hint = f"; the options of {parent or 'the config'} are {', '.join(siblings)}"
    return f"{key} is not an option{where}{hint}"


def _parents(key: str) -> list[str]:
    """The dotted parents of a key, nearest first: "a.b.c" -> ["a.b", "a"]."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
