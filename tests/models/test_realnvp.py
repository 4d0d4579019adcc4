"""RealNVP: exact inverse and log-det of the whole flow, the analytic bpd of a fresh model,
a short training run, sampling, and weights-only checkpoints written by a Lightning Trainer."""

from __future__ import annotations

import inspect
import math

import lightning as L
import pytest
import torch
from scipy.integrate import quad
from support.devices import DEVICES
from support.trainer import quiet_trainer
from torch.autograd.functional import jacobian

from gmlab.data import DigitsDataModule
from gmlab.distributions.normal import std_normal_log_prob_flat
from gmlab.errors import ConfigError, ShapeError
from gmlab.models.realnvp import RealNVP
from gmlab.nn.flows import (
    AffineCoupling,
    BatchNormFlow,
    FactorOut,
    Flow,
    Squeeze,
    WeightNormConv2d,
    build_realnvp,
    running_statistics,
)
from gmlab.utils.checkpoint import check_compatible, load_model, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


TINY = {"num_blocks": 1, "filters": 8, "channels_last": False}
FLOW_OPTIONS = set(inspect.signature(build_realnvp).parameters) - {"shape"}


def make(shape, lr: float | None = None, **options) -> RealNVP:
    """RealNVP with the flow options given flat, as the flow part's config."""
    flow = {key: options.pop(key) for key in list(options) if key in FLOW_OPTIONS}
    optimizer = {"_target_": "torch.optim.Adam", "lr": lr} if lr else None
    flow = {"_target_": "gmlab.nn.flows.build_realnvp", **flow}
    return RealNVP(shape, flow=flow, optimizer=optimizer, **options)


def randomized(model: RealNVP, seed: int = 0) -> RealNVP:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def test_architecture_is_the_papers_32x32_stack():
    model = make([3, 32, 32], num_blocks=2, filters=16, norm=None)
    logit, scale0 = model.flow
    kinds = [
        (type(f).__name__, getattr(f, "mask", None), getattr(f, "channels", None)) for f in scale0
    ]
    assert kinds[:7] == [
        ("AffineCoupling", "checkerboard", 3),
        ("AffineCoupling", "checkerboard", 3),
        ("AffineCoupling", "checkerboard", 3),
        ("Squeeze", None, None),
        ("AffineCoupling", "channel", 12),
        ("AffineCoupling", "channel", 12),
        ("AffineCoupling", "channel", 12),
    ]
    assert isinstance(scale0[7], FactorOut) and type(scale0[8]).__name__ == "Unsqueeze"
    final = list(scale0[7].flow)
    assert [(f.mask, f.channels, f.parity) for f in final] == [
        ("checkerboard", 6, 0),
        ("checkerboard", 6, 1),
        ("checkerboard", 6, 0),
        ("checkerboard", 6, 1),
    ]
    assert [f.parity for f in scale0 if isinstance(f, AffineCoupling)] == [0, 1, 0, 0, 1, 0]
    assert logit.alpha == 0.05
    assert model.flow.output_shape((3, 32, 32)) == (3, 32, 32)


def test_default_has_batch_norm_after_every_coupling():
    layers = [m for m in make([1, 8, 8], **TINY).flow.modules() if isinstance(m, Flow)]
    couplings = [i for i, m in enumerate(layers) if isinstance(m, AffineCoupling)]
    assert len(couplings) == 10
    assert all(isinstance(layers[i + 1], BatchNormFlow) for i in couplings)


def test_net_norm_puts_batch_norm_after_every_conv_but_the_last():
    def batch_norms(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]

    assert batch_norms(make([1, 8, 8], **TINY)) == []
    model = make([1, 8, 8], net_norm="batch", **{**TINY, "num_blocks": 2})
    assert len(batch_norms(model)) == 10 * (1 + 2 * 2)  # 10 couplings: inp + 2 per block
    with pytest.raises(ValueError, match="net_norm"):
        make([1, 8, 8], net_norm="act", **TINY)


def test_deeper_multiscale_stack_for_64x64():
    model = make([3, 64, 64], num_scales=5, num_blocks=1, filters=4, filter_growth=2.0)
    squeezes = [m for m in model.flow.modules() if isinstance(m, Squeeze)]
    assert len(squeezes) == 2 * 4  # one squeeze + one unsqueeze per non-final scale
    couplings = [m for m in model.flow.modules() if isinstance(m, AffineCoupling)]
    assert len(couplings) == 4 * 6 + 4
    assert couplings[-1].channels == 48 and couplings[-1].net.inp.out_channels == 4 * 2**4
    with pytest.raises(ConfigError, match=r"(?s)model.flow .*divisible by 16"):
        make([3, 40, 40], num_scales=5, **TINY)


@pytest.mark.parametrize("norm", [None, "batch", "act"])
@pytest.mark.parametrize("net_norm", [None, "batch"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_whole_flow_inverts_exactly(norm, net_norm, mode):
    torch.manual_seed(0)
    model = randomized(make([3, 8, 8], norm=norm, net_norm=net_norm, **TINY))
    model.train(mode == "train")
    y = torch.rand(6, 3, 8, 8)
    z, log_det = model.flow(y)
    assert z.shape == y.shape and log_det.shape == (6,)
    y_back, log_det_inv = model.flow.inverse(z)
    assert torch.allclose(y_back, y, atol=1e-4)
    assert torch.allclose(log_det_inv, -log_det, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("net_norm", [None, "batch"])
def test_whole_flow_log_det_and_density_match_brute_force_jacobian(net_norm):
    torch.manual_seed(1)
    model = randomized(make([2, 4, 4], net_norm=net_norm, **TINY)).double().eval()
    y = torch.rand(2, 2, 4, 4, dtype=torch.float64) * 0.9 + 0.05
    z, log_det = model.flow(y)
    for i in range(2):
        j = jacobian(lambda v: model.flow(v.reshape(1, 2, 4, 4))[0].reshape(-1), y[i].reshape(-1))
        assert torch.allclose(log_det[i], torch.linalg.slogdet(j)[1], rtol=1e-10, atol=1e-8)
    expected = std_normal_log_prob_flat(z) + log_det
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(std_normal_log_prob_flat(z), normal)
    assert torch.allclose(model.log_prob(y).double(), expected, rtol=1e-6)


def analytic_uniform_bpd(alpha: float) -> float:
    """bpd of the logit-only flow (fresh couplings are the identity) on y ~ U[0,1]^D:
    E[-log N(z) - log(1 - 2a) + log p + log(1 - p)] per dim, p = a + (1 - 2a) y."""

    def nll(y):
        p = alpha + (1 - 2 * alpha) * y
        z = math.log(p / (1 - p))
        return (
            0.5 * z * z
            + 0.5 * math.log(2 * math.pi)
            - math.log1p(-2 * alpha)
            + math.log(p * (1 - p))
        )

    per_dim, _ = quad(nll, 0.0, 1.0)
    return (per_dim + math.log(256)) / math.log(2)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_fresh_model_bpd_on_uniform_noise_is_analytic(alpha):
    torch.manual_seed(2)
    model = make([3, 8, 8], alpha=alpha, **TINY).eval()
    x = torch.randint(0, 256, (1024, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        bpd = model.bits_per_dim(x).mean().item()
    assert bpd == pytest.approx(analytic_uniform_bpd(alpha), abs=0.02)
    assert analytic_uniform_bpd(0.05) == pytest.approx(8.2075, abs=1e-3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm", [None, "batch"])
def test_bf16_autocast_keeps_float32_log_likelihood(device, norm):
    """bf16 s/t nets change bits/dim by bf16 rounding only (randomized batch-norm scales
    push a fresh model's bits/dim to ~100: hence the relative tolerance)."""
    torch.manual_seed(3)
    model = randomized(make([1, 8, 8], amp="none", norm=norm, **TINY)).eval().to(device)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8, device=device)
    torch.manual_seed(4)
    ll32 = model.log_likelihood(x)
    model.hparams.amp = "bf16"
    torch.manual_seed(4)
    ll16 = model.log_likelihood(x)
    assert ll16.dtype == torch.float32
    assert torch.allclose(model.to_bits(ll16), model.to_bits(ll32), rtol=1e-2, atol=0.05)


def test_sampling_shapes_range_temperature_and_mode():
    torch.manual_seed(5)
    model = randomized(make([1, 8, 8], norm="batch", **TINY))
    model.train()
    model.flow(torch.rand(32, 1, 8, 8))  # a training forward leaves batch statistics behind
    images = model.sample(10)
    assert images.shape == (10, 1, 8, 8) and images.min() >= 0 and images.max() <= 255
    assert model.flow.training  # restored after sampling in eval mode
    cold = model.sample(3, temperature=0.0)
    assert torch.allclose(cold, cold[:1].expand_as(cold))
    grids = model.figures(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert set(grids) == {"samples", "samples_t0.7"} and grids["samples"].dim() == 3


def test_bad_configs_and_inputs_are_clear_errors():
    with pytest.raises(ShapeError, match=r"images \[C, H, W\]"):
        make([784], **TINY)
    with pytest.raises(ValueError, match="unit-cube"):
        make([1, 8, 8], preprocess={"scale": "symmetric"}, **TINY)
    with pytest.raises(ConfigError, match=r"(?s)model.flow .*norm must be one of"):
        make([1, 8, 8], norm="layer", **TINY)
    with pytest.raises(ShapeError, match=r"\[B, 1, 8, 8\]"):
        make([1, 8, 8], **TINY).log_likelihood(torch.zeros(2, 1, 9, 9, dtype=torch.uint8))


def test_weight_decay_applies_to_weight_norm_scales_only():
    model = make([1, 8, 8], **TINY)
    decay, rest = model.configure_optimizers()["optimizer"].param_groups  # the preset's WSD
    assert decay["weight_decay"] == 5e-5 and rest["weight_decay"] == 0.0
    g = {id(m.weight_g) for m in model.modules() if isinstance(m, WeightNormConv2d)}
    assert len(g) > 0 and {id(p) for p in decay["params"]} == g
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_short_training_lowers_test_bpd_and_checkpoint_loads_weights_only(tmp_path):
    torch.manual_seed(6)
    data = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = make([1, 8, 8], num_blocks=2, filters=16, lr=3e-3, max_grad_norm=10.0)
    data.setup()
    x_test = data.tensors("test")[0]

    def test_bpd(m):
        torch.manual_seed(7)
        with torch.no_grad():
            return m.eval().bits_per_dim(x_test).mean().item()

    before = test_bpd(model)
    model.train()
    clips = []
    clip = model.clip_gradients

    def spy(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clips.append((gradient_clip_val, gradient_clip_algorithm))
        return clip(optimizer, gradient_clip_val, gradient_clip_algorithm)

    model.clip_gradients = spy
    trainer = quiet_trainer(max_steps=120, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    after = test_bpd(model)
    assert after < before - 1.0, (before, after)
    assert len(clips) == 120 and set(clips) == {(10.0, "norm")}

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["flow"]["filters"] == 16 and "state_dict" in raw
    restored = load_model(path)
    assert isinstance(restored, RealNVP)
    assert test_bpd(restored) == pytest.approx(after, abs=1e-5)

    # gmlab 0.1 wrote the flow's options flat and, before WeightNormConv2d, named g, v as
    # torch's weight-norm parametrization did: such a file still resumes (check_compatible)
    # and loads to the same model (gmlab.models.compat).
    hparams = raw["hyper_parameters"]
    flow = {k: v for k, v in hparams.pop("flow").items() if k != "_target_"}
    raw["hyper_parameters"], raw["gmlab"]["version"] = {**hparams, **flow}, 0
    legacy_names = {"weight_g": "original0", "weight_v": "original1"}
    for key in list(raw["state_dict"]):
        stem, _, leaf = key.rpartition(".")
        if leaf in legacy_names:
            new_key = f"{stem}.parametrizations.weight.{legacy_names[leaf]}"
            raw["state_dict"][new_key] = raw["state_dict"].pop(key)
    assert any("parametrizations" in key for key in raw["state_dict"])
    legacy = tmp_path / "legacy.ckpt"
    torch.save(raw, legacy)
    check_compatible(make([1, 8, 8], num_blocks=2, filters=16), read_checkpoint(legacy), legacy)
    assert test_bpd(load_model(legacy)) == pytest.approx(after, abs=1e-5)


def test_validation_and_test_recalibrate_batch_norm_on_recent_training_batches(tmp_path):
    """With the momentum averages frozen at their initial (0, 1), only the recalibration
    before validation and before test (`recalibrate_batch_norm` on the stored training
    batches, whose exactness tests/nn/test_flows.py checks) can move running statistics."""
    torch.manual_seed(8)
    data = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = make([1, 8, 8], num_blocks=1, filters=8, lr=3e-3, bn_calibration_batches=2)
    layers = [m for m in model.modules() if isinstance(m, BatchNormFlow)]
    for layer in layers:
        layer.momentum = 0.0

    def moved() -> bool:
        return any(layer.running_mean.abs().max() > 0.01 for layer in layers)

    trainer = quiet_trainer(max_steps=30, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert moved() and len(model.recent_batches) == 2
    assert all(layer.momentum == 0.0 for layer in layers)  # restored after recalibrating
    for layer in layers:
        layer.running_mean.zero_(), layer.running_var.fill_(1.0)
    trainer.test(model, datamodule=data, verbose=False)
    assert moved()


class SaveRunningStatistics(L.Callback):
    """Each rank writes its flow's batch-norm statistics as the first validation batch
    starts: after the recalibration, before DDP's forward would broadcast rank 0's buffers."""

    def __init__(self, folder) -> None:
        self.folder = folder

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if batch_idx == 0:
            stats = [b.clone() for b in running_statistics(pl_module.flow)]
            torch.save(stats, self.folder / f"rank{trainer.global_rank}.pt")


def test_two_process_ddp_ranks_validate_with_the_same_recalibrated_statistics(tmp_path):
    """Ranks train on different batches; after recalibrating they average their statistics
    (exact over all ranks' batches: tests/nn/test_flows.py) instead of all taking rank 0's
    from DDP's buffer broadcast."""
    data = DigitsDataModule(batch_size=64, eval_batch_size=300, val_size=150)
    model = make([1, 8, 8], num_blocks=1, filters=8, net_norm="batch", bn_calibration_batches=2)
    trainer = quiet_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        use_distributed_sampler=False,
        callbacks=[SaveRunningStatistics(tmp_path)],
    )
    trainer.fit(model, datamodule=data)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0) == len(running_statistics(model.flow)) > 4  # flow and net batch norms
    for a, b in zip(rank0, rank1, strict=True):
        assert torch.equal(a, b)
    assert max((a - 1).abs().max() for a in rank0[1::2]) > 0.01  # variances were recomputed


@pytest.mark.parametrize("native", [False, True, None])
def test_bf16_on_a_cpu_that_would_emulate_it_warns_once_naming_the_option(
    monkeypatch, caplog, native
):
    """The warning follows oneDNN's answer: emulated bf16 (False) warns, native (True) or
    unknown (None) does not."""
    monkeypatch.setattr("gmlab.models.realnvp.cpu_has_native_bf16", lambda: native)
    model = make([1, 8, 8], amp="bf16", **TINY)
    x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=4)
    with caplog.at_level("WARNING", logger="gmlab.models.realnvp"):
        quiet_trainer(max_steps=1, limit_val_batches=0).fit(model, train_dataloaders=loader)
    warned = [r for r in caplog.records if "model.amp=bf16" in r.getMessage()]
    assert len(warned) == (native is False)
    if warned:
        assert "model.amp=none" in warned[0].getMessage()
