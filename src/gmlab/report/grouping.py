"""Grouping runs whose configs differ only in ignored keys (seed, paths, devices, ...).

Config keys are flattened to dotted names (`model.n_components`) and matched against glob
patterns (`callbacks.*.seed`). An eval run is grouped under the config of the training run
whose folder holds its checkpoint, in a group of its own (task `eval`, with the eval
run's own overrides), so test metrics of a training run and of its evaluations never mix.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from gmlab.report.names import unknown_name
from gmlab.report.records import Run


@dataclass
class Group:
    """Runs that share a config up to the ignored keys."""

    key: str
    runs: list[Run] = field(default_factory=list)
    task: str = "train"
    model: str = ""
    data: str = ""
    overrides: list[str] = field(default_factory=list)  # non-ignored, shared by all its runs
    label: str = ""  # the overrides that set this group apart from the others
    flat: dict = field(default_factory=dict)  # config keys (not ignored) equal in all its runs

    def add(self, run: Run, model: str, data: str, overrides: list[str], flat: dict) -> None:
        """Add a run; keep only the model, data, overrides and config values that it shares
        with the others (a model or data that differs reads "mixed")."""
        if self.runs:
            self.model = self.model if model == self.model else "mixed"
            self.data = self.data if data == self.data else "mixed"
            self.overrides = [o for o in self.overrides if o in overrides]
            self.flat = {k: v for k, v in self.flat.items() if k in flat and flat[k] == v}
        else:
            self.model, self.data = model, data
            self.overrides, self.flat = list(overrides), dict(flat)
        self.runs.append(run)


def dotted_keys(tree, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree} if prefix else {}
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(dotted_keys(value, f"{name}."))
        elif isinstance(value, (list, tuple, dict)):
            flat[name] = json.dumps(value, sort_keys=True, default=str)
        else:
            flat[name] = value
    return flat


def key_names(config: dict) -> set[str]:
    """Every dotted key of a config and every prefix of one: what --group-by accepts."""
    names = set()
    for key in dotted_keys(config):
        parts = key.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def check_group_by(runs: list[Run], group_by: list[str]) -> None:
    """A --group-by key that no run's config has is a ConfigError."""
    known = set().union(*(key_names(run.config) for run in runs))
    top = {name for name in known if "." not in name}
    for name in group_by:
        if name not in known:
            raise unknown_name("--group-by", name, "is no key of the runs' configs", known, top)


def is_ignored(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def override_key(override: str) -> str:
    """`+model.lr=1e-3` -> `model.lr`; `hydra/launcher=slurm` -> `hydra/launcher`."""
    return override.lstrip("+~").split("=", 1)[0]


def kept_overrides(run: Run, ignore: list[str]) -> list[str]:
    return [o for o in run.overrides if not is_ignored(override_key(o), ignore)]


def config_key(config: dict, overrides: list[str], ignore: list[str], group_by) -> str:
    flat = dotted_keys(config)
    if group_by:
        picked = {}
        for name in group_by:
            picked[name] = {k: v for k, v in flat.items() if k == name or k.startswith(name + ".")}
        return json.dumps(picked, sort_keys=True, default=str)
    if not flat:  # no config recorded (e.g. a skipped job): its overrides stand for it
        return json.dumps(sorted(overrides))
    kept = {k: v for k, v in flat.items() if not is_ignored(k, ignore)}
    return json.dumps(kept, sort_keys=True, default=str)


def _choice(run: Run, group: str) -> str:
    if group in run.choices:
        return str(run.choices[group])
    for override in run.overrides:
        if override_key(override) == group:
            return override.split("=", 1)[1]
    node = run.config.get(group)
    target = node.get("_target_") if isinstance(node, dict) else None
    return str(target).rsplit(".", 1)[-1] if target else ""


def training_run_of(ckpt: Path, by_path: dict[Path, Run], read) -> Run | None:
    """The run whose folder holds checkpoint `ckpt`: one already found, else read from disk
    (`read(folder)`) when the folder still has its config."""
    for folder in ckpt.parents:
        if folder in by_path:
            return by_path[folder]
        if (folder / ".hydra" / "config.yaml").is_file():
            return read(folder)
    return None


def group_runs(runs: list[Run], ignore: list[str], group_by=None, read=None) -> list[Group]:
    """Groups in order of first appearance; unreadable runs without a config are left out
    (the caller lists them). A `group_by` key that no config has is a ConfigError."""
    if group_by:
        check_group_by(runs, group_by)
    by_path = {run.path: run for run in runs}
    groups: dict[str, Group] = {}
    for run in runs:
        if run.status == "unreadable" and not run.config:
            continue
        base, eval_overrides = run, []
        if run.task == "eval":
            trained = training_run_of(run.ckpt_path, by_path, read) if run.ckpt_path else None
            if trained is not None:
                base = trained
            eval_overrides = kept_overrides(run, ignore)
        overrides = kept_overrides(base, ignore)
        key = config_key(base.config, overrides, ignore, group_by)
        if run.task == "eval":
            key = json.dumps(["eval", key, sorted(eval_overrides)])
        groups.setdefault(key, Group(key=key, task=run.task)).add(
            run,
            _choice(base, "model"),
            _choice(run, "data") or _choice(base, "data"),
            overrides + [f"eval: {o}" for o in eval_overrides],
            {k: v for k, v in dotted_keys(base.config).items() if not is_ignored(k, ignore)},
        )
    result = list(groups.values())
    _label(result)
    return result


def _label(groups: list[Group]) -> None:
    """Each group's label: its overrides that are not shared by every group (model and
    data have their own columns)."""
    sets = [set(g.overrides) for g in groups]
    common = set.intersection(*sets) if len(sets) > 1 else set()
    for group in groups:
        shown = [
            o
            for o in group.overrides
            if o not in common and override_key(o) not in ("model", "data")
        ]
        group.label = " ".join(shown)
    by_label: dict[tuple, list[Group]] = {}
    for group in groups:
        by_label.setdefault((group.model, group.data, group.task, group.label), []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        keys = sorted({k for g in same for k in g.flat})
        differ = [k for k in keys if len({repr(g.flat.get(k)) for g in same}) > 1][:3]
        for group in same:
            extra = " ".join(f"{k}={_value(group.flat.get(k))}" for k in differ)
            group.label = f"{group.label} {extra}".strip()


def _value(value) -> str:
    """A config value as it is written on the command line (null, true, 0.001)."""
    return value if isinstance(value, str) else json.dumps(value)
