"""The GMM classifier's hybrid objective and feature normalisation (models/gmm_classifier)."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from gmlab.data import DigitsDataModule
from gmlab.errors import ConfigError
from gmlab.models.gmm_classifier import GMMClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(**kw) -> GMMClassifier:
    trunk = {"_target_": "gmlab.nn.MnistCNN", "channels": [4, 8]}
    args = dict(data_shape=(1, 8, 8), num_classes=10, features=16, trunk=trunk)
    args.update(optimizer={"_target_": "torch.optim.Adam", "lr": 3e-3})
    return GMMClassifier(**{**args, **kw})


def loss_of(model, x, y) -> torch.Tensor:
    with warnings.catch_warnings():  # self.log outside a Trainer
        warnings.simplefilter("ignore")
        return model.training_step((x, y), 0)


def test_hybrid_loss_and_warmup():
    torch.manual_seed(0)
    x, y = (t[:32] for t in DigitsDataModule().tensors("train"))
    model = small_model(density_weight=0.5, density_warmup_steps=100)
    assert [model.density_weight(s) for s in (0, 50, 100, 500)] == [0.0, 0.25, 0.5, 0.5]
    model.hparams.density_warmup_steps = 0
    joint = model.joint(x).float()
    expected = F.cross_entropy(joint, y) - 0.5 * joint.logsumexp(-1).mean() / 16
    assert torch.allclose(loss_of(model, x, y), expected, atol=1e-5)
    plain = small_model()  # default: nll_loss alone
    assert torch.allclose(loss_of(plain, x, y), F.cross_entropy(plain.joint(x).float(), y))
    with pytest.raises(ConfigError, match="head=gmm"):
        small_model(head={"_target_": "gmlab.nn.gmm_layer.LinearClassifier"}, density_weight=1.0)


def test_feature_norm_removes_the_trunks_scale():
    torch.manual_seed(0)
    x = DigitsDataModule().tensors("test")[0][:8]
    for norm in (True, False):
        model = small_model(feature_norm=norm)
        before = model.joint(x).detach()
        f = model.features(x).detach()
        last = model.trunk.net[-1] if isinstance(model.trunk.net[-1], torch.nn.Linear) else None
        last = last or [m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(0.01)
            last.bias.mul_(0.01)
        after = model.joint(x).detach()
        if norm:  # every feature vector standardised: same features, same log p(f, y)
            assert torch.allclose(f.mean(-1), torch.zeros(8), atol=1e-5)
            assert torch.allclose(f.var(-1, unbiased=False), torch.ones(8), atol=1e-4)
            assert torch.allclose(after, before, atol=1e-3)
        else:  # shrunk features: log p(f) moves
            assert (after - before).abs().max() > 0.05


def test_feature_log_scale_turns_the_trunks_scale_into_a_shift_of_one_entry():
    """Shrinking the trunk's output by c leaves the standardised entries as they are and
    moves the last entry by exactly log c; its value is the log standard deviation."""
    torch.manual_seed(0)
    x = DigitsDataModule().tensors("test")[0][:8]
    model = small_model(feature_norm=True, feature_log_scale=True)
    f = model.features(x).detach()
    assert f.shape == (8, model.hparams.features)  # features - 1 trunk outputs + log s
    raw = model.trunk(model.inputs(x)).detach()
    torch.testing.assert_close(f[:, -1], raw.var(-1, unbiased=False).sqrt().log())
    last = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.mul_(0.01)
    g = model.features(x).detach()
    torch.testing.assert_close(g[:, :-1], f[:, :-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g[:, -1] - f[:, -1], torch.full((8,), math.log(0.01)))
    with pytest.raises(ConfigError, match="feature_norm"):
        small_model(feature_log_scale=True)


def test_batch_feature_norm_standardises_each_entry_over_the_batch():
    """Training: every entry standardised over the batch, so shrinking the trunk changes
    nothing; evaluation: the running statistics, so one input's scale stays visible."""
    torch.manual_seed(0)
    x = DigitsDataModule().tensors("test")[0][:32]
    model = small_model(feature_norm="batch")
    raw = model.trunk(model.inputs(x)).detach()
    mean, var = raw.mean(0), raw.var(0, unbiased=False)
    f = model.features(x).detach()  # train mode: batch statistics
    torch.testing.assert_close(f, (raw - mean) / var.sqrt(), atol=1e-4, rtol=1e-4)
    before = model.joint(x).detach()
    last = [m for m in model.trunk.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.mul_(0.01)
    model.batch_norm.reset_running_stats()
    torch.testing.assert_close(model.joint(x).detach(), before, atol=1e-3, rtol=1e-4)
    model.eval()  # running statistics after that one batch (momentum 0.1, unbiased var)
    run_mean, run_var = 0.1 * mean * 0.01, 0.9 + 0.1 * raw.var(0) * 1e-4
    torch.testing.assert_close(
        model.features(x[:4]).detach(),
        (raw[:4] * 0.01 - run_mean) / run_var.sqrt(),
        atol=1e-4,
        rtol=1e-4,
    )
    with pytest.raises(ConfigError, match="feature_norm=layer"):
        small_model(feature_norm="batch", feature_log_scale=True)
    with pytest.raises(ConfigError, match="none, layer, batch"):
        small_model(feature_norm="group")


def test_hybrid_training_raises_log_pf_of_the_data():
    dm = DigitsDataModule(val_size=150)
    x, y = dm.tensors("train")
    result = {}
    for lam in (0.0, 4.0):
        torch.manual_seed(0)
        model = small_model(density_weight=lam, feature_norm=True)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(60):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            opt.zero_grad()
            loss_of(model, x[idx], y[idx]).backward()
            opt.step()
        with torch.no_grad():
            x_val, y_val = dm.tensors("val")
            joint = model.eval().joint(x_val).float()
        result[lam] = (
            joint.logsumexp(-1).mean().item(),
            (joint.argmax(-1) == y_val).float().mean().item(),
        )
    assert result[4.0][0] > result[0.0][0] + 2.0  # log p(f) of held-out digits rises
    assert result[4.0][1] > 0.8 and result[0.0][1] > 0.8  # both still classify
