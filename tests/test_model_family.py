"""The recipe "Adding a model family" (docs/architecture.md) as a newcomer follows it: its
code blocks, copied verbatim into a module and a config folder outside `src/`, train, test
and reload through the console scripts, and the model's log-likelihood is the Laplace
density of torch.distributions. The model contract is enforced at construction."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from support.cli import gmlab

from gmlab.data import DigitsDataModule
from gmlab.errors import UntrustedFileError
from gmlab.models.base import GenerativeModel
from gmlab.utils.checkpoint import load_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCK = re.compile(r"<!-- recipe: (\S+) -->\n```\w+\n(.*?)```", re.S)


def recipe_files() -> dict[str, str]:
    """{relative path: text} of the recipe's marked code blocks."""
    return dict(BLOCK.findall(DOC.read_text()))


def test_the_recipe_has_its_module_and_its_config():
    assert set(recipe_files()) == {"my_family.py", "conf/model/laplace.yaml"}


@pytest.mark.slow
def test_a_family_written_as_the_recipe_says_trains_tests_and_reloads(
    tmp_path, run_env, monkeypatch
):
    code, conf = tmp_path / "code", tmp_path / "my_conf"
    for name, text in recipe_files().items():
        path = (code if name.endswith(".py") else tmp_path / "my_conf") / name.removeprefix("conf/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {**run_env, "PYTHONPATH": f"{code}:{run_env['PYTHONPATH']}"}
    run = tmp_path / "run"
    common = ["logger=csv", "~callbacks.progress_bar", "~callbacks.model_summary"]
    gmlab(
        "gmlab-train",
        [
            f"hydra.searchpath=[file://{conf}]",
            "model=laplace",
            "data=digits",
            "trainer.max_epochs=3",
            f"hydra.run.dir={run}",
            *common,
        ],
        env,
    )
    trained = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "run.json").read_text())["status"] == "finished"

    last = run / "checkpoints" / "last.ckpt"
    refused = gmlab(
        "gmlab-eval", [f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'e0'}"], env, False
    )
    assert refused.returncode == 1 and "gmlab.class" in refused.stderr
    assert "Traceback" not in refused.stderr
    evaluated = gmlab(
        "gmlab-eval",
        [f"ckpt_path={last}", "trusted_targets=[my_family.]", f"hydra.run.dir={tmp_path / 'e1'}"],
        env,
    )
    again = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert "test/bpd" in evaluated.stdout
    assert again["test/bpd"] == pytest.approx(trained["test/bpd"], rel=1e-5)

    monkeypatch.syspath_prepend(str(code))
    with pytest.raises(UntrustedFileError):
        load_model(last)
    model = load_model(last, trusted_targets=["my_family."]).eval()
    data = DigitsDataModule(batch_size=64)
    data.setup("test")
    x_raw = next(iter(data.test_dataloader()))[0]
    torch.manual_seed(0)
    ll = model.log_likelihood(x_raw)
    torch.manual_seed(0)
    x, log_det = model.prepare(x_raw)
    laplace = torch.distributions.Laplace(model.loc, model.scale)
    expected = laplace.log_prob(x).flatten(1).sum(1) + log_det
    torch.testing.assert_close(ll, expected)
    assert model.sample(5).shape == (5, 1, 8, 8)
    untrained = type(model)(**model.hparams).eval()
    torch.manual_seed(0)
    before = untrained.bits_per_dim(x_raw).mean()
    torch.manual_seed(0)
    assert model.bits_per_dim(x_raw).mean() < before - 0.1  # it learned from the digits


def test_a_model_without_the_contracts_methods_cannot_be_built():
    class Incomplete(GenerativeModel):
        def training_step(self, batch, batch_idx):
            return None

    with pytest.raises(TypeError, match="log_likelihood, sample"):
        Incomplete([2])
