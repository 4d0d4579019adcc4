"""The private part of Hydra that gmlab reads: `hydra._internal.utils.get_args_parser`, the
parser of Hydra's own command line, which `gmlab.utils.cli.check_command_line` runs before
Hydra does, to check every job's config. A Hydra release that moves it or renames what it
returns fails here, naming that code, instead of in every `gmlab-train` call."""

from __future__ import annotations

import hydra
import pytest

# what check_command_line reads of the parsed command line
READ = (
    "help",
    "hydra_help",
    "info",
    "shell_completion",
    "config_dir",
    "config_path",
    "experimental_rerun",
    "config_name",
    "overrides",
    "multirun",
    "cfg",
)


def need(ok: bool, what: str) -> None:
    if not ok:
        pytest.fail(
            f"Hydra {hydra.__version__}: {what} is gone or changed; "
            "gmlab.utils.cli.check_command_line depends on it (its checks run before Hydra's).",
            pytrace=False,
        )


def test_hydras_argument_parser_reads_what_gmlab_checks_before_hydra():
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:
        need(False, "hydra._internal.utils.get_args_parser")
    args = get_args_parser().parse_args(["-m", "model=vae", "seed=1", "--cfg", "job"])
    missing = [name for name in READ if not hasattr(args, name)]
    need(not missing, f"the parsed arguments' {missing}")
    need(args.multirun is True and args.cfg == "job", "-m / --cfg")
    need(list(args.overrides) == ["model=vae", "seed=1"], "the overrides")
    plain = get_args_parser().parse_args(["seed=1"])
    need(not plain.multirun and plain.cfg is None and not plain.help, "the defaults")
