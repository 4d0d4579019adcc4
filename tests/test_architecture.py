"""The layering rules of docs/architecture.md ("Layers"), read from the source: which gmlab
package may import which (the table below, the same as the one in the docs), that the math
imports only torch, and that no file meant for readers points outside the repository."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gmlab"
DOC = ROOT / "docs" / "architecture.md"

_MODEL_LAYER = ("errors", "ops", "distributions", "nn", "utils", "plotting", "data", "metrics")
# package -> the gmlab packages it may import (within a package anything goes); `gmlab` is
# the package's own __init__.py. docs/architecture.md shows this very table.
MAY_IMPORT = {
    "errors": (),
    "ops": ("errors",),
    "distributions": ("errors", "ops"),
    "nn": ("errors", "ops", "distributions"),
    "utils": ("errors",),
    "plotting": (),
    "data": ("errors", "ops", "utils"),
    "metrics": ("errors", "ops", "distributions", "nn", "utils"),
    "models": _MODEL_LAYER,
    "estimators": (*_MODEL_LAYER, "models"),
    "ood": (*_MODEL_LAYER, "models"),
    "callbacks": (*_MODEL_LAYER, "models"),
    "report": ("errors", "utils", "plotting"),
    "train": (*_MODEL_LAYER, "models", "callbacks"),
    "eval": (*_MODEL_LAYER, "models", "callbacks", "ood"),
    "api": (*_MODEL_LAYER, "models", "callbacks", "train", "eval"),
    "gmlab": ("estimators",),
}
MATH = ("errors", "ops", "distributions", "nn")  # standard library, torch and gmlab only


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, at any depth (also the
    ones inside functions), relative imports resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, module))
            # `from gmlab import nn` imports the sub-package itself
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def package_of(module: str) -> str | None:
    """The row of the table that `module` (absolute) belongs to; None outside gmlab or for
    the bare `gmlab` (imported by every gmlab import; its names count as `gmlab.<name>`)."""
    parts = module.split(".")
    if parts[0] != "gmlab" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in MAY_IMPORT else "gmlab"


def wrong_arrows(root: Path = PACKAGE) -> list[str]:
    """`file:line imports module` for every gmlab import the importer's row does not allow."""
    found = {}  # one entry per file, line and target: `from a.b import c` also yields a.b.c
    for path in sorted(root.rglob("*.py")):
        importer = package_of(module_name(path, root)) or "gmlab"
        where = path.relative_to(root.parent)
        for line, module in imported_modules(path, root):
            target = package_of(module)
            if target not in (None, importer, *MAY_IMPORT[importer]):
                found.setdefault(
                    (where, line, target),
                    f"{where}:{line} imports {module} ({importer} may not import {target})",
                )
    return list(found.values())


def test_imports_follow_the_table():
    assert wrong_arrows() == []


def test_the_math_imports_only_torch():
    allowed = {*sys.stdlib_module_names, "torch", "gmlab"}
    found = []
    for layer in MATH:
        files = [PACKAGE / f"{layer}.py"] if layer == "errors" else (PACKAGE / layer).rglob("*.py")
        for path in sorted(files):
            for line, module in imported_modules(path):
                if module.split(".")[0] not in allowed:
                    found.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert found == []


def test_every_module_has_a_row_and_the_table_has_no_cycle():
    packages = {package_of(module_name(path)) or "gmlab" for path in PACKAGE.rglob("*.py")}
    assert packages == set(MAY_IMPORT)
    assert {t for targets in MAY_IMPORT.values() for t in targets} <= set(MAY_IMPORT)
    placed: list[str] = []  # a topological order exists iff there is no cycle
    while len(placed) < len(MAY_IMPORT):
        ready = [p for p, ts in MAY_IMPORT.items() if p not in placed and set(ts) <= set(placed)]
        assert ready, f"cycle among {sorted(set(MAY_IMPORT) - set(placed))}"
        placed += ready


def documented_table() -> dict[str, tuple[str, ...]]:
    """The "Layers" table of docs/architecture.md: package -> may import."""
    section = DOC.read_text().split("## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|[^\n]*\| ([^|\n]+) \|$", section, re.MULTILINE)
    return {name: tuple(re.findall(r"`(\w+)`", targets)) for name, targets in rows}


def test_the_docs_state_the_same_table():
    assert documented_table() == MAY_IMPORT


def test_the_checker_flags_a_wrong_arrow_with_its_line(tmp_path):
    """wrong_arrows on a planted tree: `distributions` importing `models` lazily is caught
    with file and line, `nn` importing `distributions` (allowed) is not."""
    root = tmp_path / "gmlab"
    for layer in ("distributions", "nn"):
        (root / layer).mkdir(parents=True)
    (root / "distributions" / "bad.py").write_text(
        "import torch\n\n\ndef f():\n    from gmlab.models.base import GmlabModule\n"
    )
    (root / "nn" / "good.py").write_text("from ..distributions import lowrank\n")
    assert wrong_arrows(root) == [
        "gmlab/distributions/bad.py:5 imports gmlab.models.base "
        "(distributions may not import models)"
    ]


def test_the_checker_sees_relative_and_nested_imports(tmp_path):
    """The walker above on a planted file: a lazy import inside a function and a relative
    one both count (so the rule cannot pass by hiding an import)."""
    fake = tmp_path / "gmlab" / "distributions"
    fake.mkdir(parents=True)
    path = fake / "bad.py"
    path.write_text("def f():\n    from gmlab.nn.made import MADE\n\nfrom ..models import base\n")
    modules = [m for _, m in imported_modules(path, tmp_path / "gmlab")]
    assert "gmlab.nn.made" in modules and "gmlab.models.base" in modules


OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared")


def test_nothing_refers_to_documents_outside_the_repository():
    readers = [ROOT / "src", ROOT / "conf", ROOT / "docs", ROOT / "notebooks"]
    hits = []
    for folder in readers:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or ".egg-info" in str(path) or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:
                continue  # images
            for number, line in enumerate(text.splitlines(), 1):
                if OUTSIDE.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert hits == []


def test_public_api_names_the_classes():
    import gmlab.distributions as distributions
    import gmlab.models as models
    import gmlab.nn as nn
    from gmlab.distributions.mfa import MixtureOfFactorAnalyzers
    from gmlab.models.realnvp import RealNVP
    from gmlab.nn.gmm_layer import GaussianMixtureClassifier

    assert nn.GaussianMixtureClassifier is GaussianMixtureClassifier
    assert models.RealNVP is RealNVP
    assert distributions.MixtureOfFactorAnalyzers is MixtureOfFactorAnalyzers
    for package in (nn, models, distributions):
        assert all(hasattr(package, name) for name in package.__all__)


def test_an_optimizer_added_as_one_yaml_on_the_search_path_trains(tmp_path):
    """docs/architecture.md's worked example: conf/model/optimizer/rmsprop.yaml in a folder
    of one's own, found through hydra.searchpath, with no edit to src/ or conf/."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from support.trainer import quiet_trainer

    from gmlab.data import DigitsDataModule

    folder = tmp_path / "my_conf" / "model" / "optimizer"
    folder.mkdir(parents=True)
    (folder / "rmsprop.yaml").write_text(
        "_target_: torch.optim.RMSprop\n_partial_: true\nlr: 2.0e-3\nalpha: 0.9\n"
    )
    overrides = [
        f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]",
        "model=gaussian",
        "model/optimizer=rmsprop",
        "data=digits",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    model = instantiate(cfg.model, _convert_="all")
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
    (optimizer,) = trainer.optimizers
    assert type(optimizer) is torch.optim.RMSprop
    assert optimizer.defaults["alpha"] == 0.9
    assert optimizer.defaults["lr"] == 0.01  # the model's YAML sets its own lr over the part's
    assert optimizer.state  # it stepped
