"""The layering rules, read from the source: `gmlab.distributions` (the math) imports nothing
from `gmlab.nn` or `gmlab.models`, `gmlab.nn` nothing from `gmlab.models` (so no import
cycle can run through them); and no file meant for readers points outside the repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "gmlab"
FORBIDDEN = {
    "distributions": ("gmlab.nn", "gmlab.models"),
    "nn": ("gmlab.models",),
}


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


def test_imports_point_one_way():
    violations = []
    for layer, banned in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for line, module in imported_modules(path):
                if any(module == b or module.startswith(b + ".") for b in banned):
                    violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert violations == []


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
