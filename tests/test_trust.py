"""Files are data: a crafted checkpoint cannot make `load_model`, `gmlab-eval` or a model that
loads a stage-1 checkpoint run code or write a file. Each crafted file is built here, from a
checkpoint that loads (the control), with one node changed; each is refused before any side
effect: the marker file its payload would write does not exist, and the error names the key."""

from __future__ import annotations

import sys

import pytest
import torch
from support.cli import gmlab
from support.parts import part

from gmlab.errors import UntrustedFileError
from gmlab.models.gaussian import DiagonalGaussian
from gmlab.models.mfa_finetune import MFAFinetune
from gmlab.models.realnvp import RealNVP
from gmlab.models.vae import VAE
from gmlab.utils.checkpoint import load_model
from gmlab.utils.trust import check_stored_config, trusting

DIGITS = {
    "_target_": "gmlab.data.DigitsDataModule",
    "batch_size": 64,
    "eval_batch_size": 512,
    "val_size": 150,
    "test_size": 297,
    "split_seed": 0,
    "shape": [1, 8, 8],
    "num_levels": 256,
    "num_classes": 10,
    "limit": None,
}


def save(model, path, data=None, **changes):
    """`model`'s checkpoint as gmlab writes it (on_save_checkpoint), with hyperparameters
    replaced by `changes`."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    checkpoint["hyper_parameters"].update(changes)
    if data is not None:
        checkpoint["gmlab"]["config"] = {"data": data}
    torch.save(checkpoint, path)
    return path


def savetxt_then_load(marker):
    """The payload: numpy writes a file, then unpickles it (allow_pickle)."""
    return {
        "_target_": "numpy.load",
        "allow_pickle": True,
        "file": {"_target_": "numpy.savetxt", "fname": str(marker), "X": [[1.0]]},
    }


@pytest.fixture
def vae():
    return VAE(data_shape=[1, 8, 8], latent_dim=2)


def test_the_control_checkpoint_loads(vae, tmp_path):
    model = load_model(save(vae, tmp_path / "ok.ckpt"))
    assert isinstance(model, VAE)
    for name, value in vae.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_numpy_savetxt_and_load_chain_is_refused_before_it_runs(vae, tmp_path):
    marker = tmp_path / "written.txt"
    path = save(vae, tmp_path / "evil.ckpt", prior=savetxt_then_load(marker))
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.prior\._target_.*numpy"):
        load_model(path)
    assert not marker.exists()


def test_a_target_two_levels_down_is_refused(vae, tmp_path):
    marker = tmp_path / "written.txt"
    prior = {
        "_target_": "gmlab.distributions.priors.NormalPrior",
        "extra": {"deeper": [{"_target_": "numpy.savetxt", "fname": str(marker), "X": [1.0]}]},
    }
    path = save(vae, tmp_path / "evil.ckpt", prior=prior)
    with pytest.raises(UntrustedFileError, match=r"prior\.extra\.deeper\[0\]\._target_"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "target",
    [
        "torch.save",  # outside the list
        "torch.optim.optimizer.torch.save",  # a torch.optim prefix reaching torch.save
        "gmlab.models.base.torch.save",  # a gmlab prefix reaching torch.save
        "gmlab.utils.runs.write_json_atomic",  # a gmlab function that writes files
        "lightning.pytorch.Trainer",
    ],
)
def test_an_optimizer_target_outside_the_list_is_refused(vae, tmp_path, target):
    path = save(vae, tmp_path / "evil.ckpt", optimizer={"_target_": target, "_partial_": True})
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.optimizer\._target_"):
        load_model(path)


def test_the_torch_optimizers_and_schedulers_of_the_presets_are_allowed(tmp_path):
    allowed = {
        "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "step_size": 3},
        "wsd": {"_target_": "gmlab.utils.lr_schedule.WarmupStableDecay"},
        "flow": {"_target_": "gmlab.nn.flows.build_realnvp"},
        "data": DIGITS,
    }
    check_stored_config(allowed, "file")  # no error


def test_a_payload_that_the_conversion_of_an_old_checkpoint_moves_is_still_refused(tmp_path):
    """gmlab 0.1 wrote RealNVP's flow options flat; `gmlab.models.compat` moves them into
    the flow part, and the trust check runs on the converted hyperparameters."""
    marker = tmp_path / "written.txt"
    flow = {"_target_": "gmlab.nn.flows.build_realnvp", "num_scales": 1, "num_blocks": 1}
    model = RealNVP([1, 8, 8], flow={**flow, "filters": 4})
    path = save(model, tmp_path / "evil.ckpt", filters=savetxt_then_load(marker))
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["flow"], checkpoint["gmlab"]["version"]  # gmlab 0.1
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.flow\.filters\._target_"):
        load_model(path)
    assert not marker.exists()


def test_a_target_the_prior_rename_of_an_old_checkpoint_rewrites_is_still_refused(tmp_path):
    """The VAE converter of version-1 files rewrites `gmlab.nn.priors.<rest>` into
    `gmlab.nn.network_priors.<rest>`, `<rest>` taken from the file: the trust check runs on
    the rewritten name, and `torch.save` reached through the module's own import is refused."""
    model = VAE(data_shape=[1, 8, 8], latent_dim=2, prior=part("prior", "made"))
    prior = {"_target_": "gmlab.nn.priors.torch.save", "obj": 1, "f": str(tmp_path / "w")}
    path = save(model, tmp_path / "evil.ckpt", prior=prior)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["gmlab"]["version"] = 1
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.prior\._target_"):
        load_model(path)
    assert not (tmp_path / "w").exists()


def test_an_interpolation_in_a_stored_config_is_refused(vae, tmp_path):
    path = save(vae, tmp_path / "evil.ckpt", likelihood={"_target_": "${oc.env:HOME}"})
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.likelihood\._target_"):
        load_model(path)


def recording_class(path, name: str):
    """The checkpoint at `path`, rewritten to record the model class `name`."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["gmlab"]["class"] = name
    torch.save(checkpoint, path)
    return path


def test_a_model_class_outside_gmlab_is_refused(vae, tmp_path):
    path = recording_class(save(vae, tmp_path / "evil.ckpt"), "torch.nn.Linear")
    with pytest.raises(UntrustedFileError, match=r"gmlab\.class.*torch\.nn\.Linear"):
        load_model(path)


def test_a_model_class_whose_import_has_a_side_effect_is_never_imported(vae, tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "side_effect_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nclass Model: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = recording_class(save(vae, tmp_path / "evil.ckpt"), "side_effect_module.Model")
    with pytest.raises(UntrustedFileError, match=r"gmlab\.class"):
        load_model(path)
    assert not marker.exists() and "side_effect_module" not in sys.modules


def test_a_trusted_prefix_lets_the_user_load_a_file_they_trust(vae, tmp_path):
    """The opt-in (`trusted_targets`) as an argument and as the CLI's context."""
    path = save(vae, tmp_path / "own.ckpt", optimizer={"_target_": "torch.optim.adam.Adam"})
    load_model(path)  # a torch optimizer: allowed without opt-in
    prior = {"_target_": "gmlab.distributions.priors.NormalPrior", "note": "${x}"}
    path = save(vae, tmp_path / "other.ckpt", likelihood={"_target_": "collections.OrderedDict"})
    with pytest.raises(UntrustedFileError, match="trusted_targets"):
        load_model(path)
    with pytest.raises(UntrustedFileError):
        check_stored_config(prior, "file")  # the opt-in never allows interpolations
    with trusting(["collections."]), pytest.raises(Exception) as err:
        load_model(path)  # allowed now: fails later, building an OrderedDict as a likelihood
    assert not isinstance(err.value, UntrustedFileError)


def test_a_stage_two_model_refuses_a_crafted_stage_one_checkpoint(tmp_path):
    """model.em_ckpt goes through the same check (so do model.vqvae_ckpt and
    ood.reference_ckpt, which call the same load_model)."""
    marker = tmp_path / "written.txt"
    em = DiagonalGaussian(data_shape=[64])
    path = save(em, tmp_path / "em.ckpt", optimizer=savetxt_then_load(marker))
    with pytest.raises(UntrustedFileError, match=r"hyper_parameters\.optimizer"):
        MFAFinetune(data_shape=[64], em_ckpt=str(path))
    assert not marker.exists()


def test_gmlab_eval_refuses_a_target_in_the_stored_data_config(tmp_path, run_env):
    model = DiagonalGaussian(data_shape=[1, 8, 8])
    good = save(model, tmp_path / "good.ckpt", data=DIGITS)
    out = gmlab("gmlab-eval", [f"ckpt_path={good}", f"hydra.run.dir={tmp_path / 'ok'}"], run_env)
    assert "test/bpd" in out.stdout  # the control: the stored data config is used

    marker = tmp_path / "written.txt"
    data = {**DIGITS, "extra": savetxt_then_load(marker)}
    evil = save(model, tmp_path / "evil.ckpt", data=data)
    run = [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'evil'}"]
    out = gmlab("gmlab-eval", run, run_env, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "gmlab.config.data.extra._target_" in errors[0]
    assert not marker.exists()


def test_gmlab_eval_refuses_a_crafted_model_checkpoint(vae, tmp_path, run_env):
    marker = tmp_path / "written.txt"
    evil = save(vae, tmp_path / "evil.ckpt", data=DIGITS, prior=savetxt_then_load(marker))
    run = [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'evil'}"]
    out = gmlab("gmlab-eval", run, run_env, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "error:" in out.stderr and "hyper_parameters.prior._target_" in out.stderr
    assert not marker.exists()
