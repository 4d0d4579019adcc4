"""Preprocessing, bits/dim and batching against analytic values and brute force."""

from __future__ import annotations

import math

import pytest
import torch

from gmlab.data.loader import IndexBatchLoader
from gmlab.data.preprocess import Preprocessor, dequantize_uniform
from gmlab.errors import ConfigError, NonFiniteError, ShapeError
from gmlab.metrics.bpd import bits_per_dim, nats_to_bits


def test_uniform_density_on_unit_cube_is_eight_bits():
    # p(y) = 1 on [0,1]^D is the uniform pmf 256^-D: exactly 8 bits/dim.
    assert bits_per_dim(torch.zeros(3), num_dims=784).tolist() == pytest.approx([8.0] * 3)
    # a log-pmf of D ln 2 nats below 0 is 1 bit/dim
    assert nats_to_bits(torch.tensor(-10 * math.log(2)), 10).item() == pytest.approx(1.0)


def test_dequantized_values_stay_in_their_bins():
    x = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    pre = Preprocessor(dequantize=True)
    y, log_det = pre(x)
    assert torch.equal(torch.floor(y * 256).to(torch.uint8), x)
    assert torch.equal(log_det, torch.zeros(64))
    assert torch.equal(pre.to_pixels(pre.to_model_space(x)).round().to(torch.uint8), x)


def test_dequantization_noise_is_uniform_and_seeded():
    """The packed 16-bit noise passes a Kolmogorov-Smirnov test against U(0, 1), never hits
    a bin edge, and follows torch's seed (bitwise resume depends on that)."""
    from scipy import stats

    torch.manual_seed(3)
    u = dequantize_uniform(torch.zeros(200_001))  # odd length: a partly used last word
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u.double().numpy(), "uniform").pvalue > 1e-3
    # every one of the four 16-bit lanes of a word is uniform on its own
    for lane in range(4):
        assert stats.kstest(u[lane::4].double().numpy(), "uniform").pvalue > 1e-3
    torch.manual_seed(3)
    assert torch.equal(dequantize_uniform(torch.zeros(200_001)), u)


def test_continuous_data_pass_through_and_integer_input_is_an_error():
    pre = Preprocessor(num_levels=None)
    points = torch.randn(7, 2) * 300
    y, log_det = pre(points, train=True)
    assert torch.equal(y, points) and torch.equal(log_det, torch.zeros(7))
    assert torch.equal(pre.to_pixels(points), points)
    assert torch.equal(pre.to_model_space(points), points)
    with pytest.raises(ShapeError, match="continuous data"):
        pre(torch.zeros(3, 2, dtype=torch.uint8))


def test_symmetric_scaling_log_det_matches_change_of_variables():
    """p_y(y) = p_t(2y-1) * 2^D: a standard normal in t-space, checked by brute force."""
    x = torch.randint(0, 256, (5, 3, 2, 2), dtype=torch.uint8)
    pre = Preprocessor(dequantize=False, scale="symmetric")
    t, log_det = pre(x)
    y = (x.float() + 0.5) / 256
    torch.testing.assert_close(t, 2 * y - 1)
    normal = torch.distributions.Normal(0.0, 1.0)
    log_py = normal.log_prob(2 * y - 1).flatten(1).sum(1) + 12 * math.log(2.0)
    torch.testing.assert_close(normal.log_prob(t).flatten(1).sum(1) + log_det, log_py)


@pytest.mark.parametrize("alpha", [1e-4, 0.05])
def test_logit_scale_is_the_change_of_variables_of_torch_distributions(alpha):
    """A standard normal in z = logit(alpha + (1 - 2 alpha) y) has, on the unit cube, the
    density of torch's TransformedDistribution through the inverse map (sigmoid, affine)."""
    x = torch.randint(0, 256, (6, 1, 3, 3), dtype=torch.uint8)
    x[0] = 0
    x[1] = 255  # the ends of the range, where the log-det is largest
    pre = Preprocessor(dequantize=False, scale="logit", logit_alpha=alpha)
    z, log_det = pre(x)
    y = (x.double() + 0.5) / 256
    transforms = torch.distributions.transforms
    to_unit = [
        transforms.SigmoidTransform(),
        transforms.AffineTransform(-alpha / (1 - 2 * alpha), 1 / (1 - 2 * alpha)),
    ]
    base = torch.distributions.Normal(torch.zeros(9, dtype=torch.float64), 1.0)
    dist = torch.distributions.TransformedDistribution(base, to_unit)
    expected = dist.log_prob(y.flatten(1)).sum(1)
    ours = torch.distributions.Normal(0.0, 1.0).log_prob(z.double()).flatten(1).sum(1) + log_det
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(pre.to_pixels(z), x.float(), atol=2e-3, rtol=0)
    torch.testing.assert_close(pre.to_model_space(x), z)


def test_logit_alpha_outside_its_range_is_a_config_error():
    with pytest.raises(ConfigError, match="logit_alpha"):
        Preprocessor(scale="logit", logit_alpha=0.0)


def test_binarization_and_flips():
    x = torch.tensor([[[[0, 255], [128, 127]]]], dtype=torch.uint8)
    static, _ = Preprocessor(binarize="static")(x)
    assert static.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]
    torch.manual_seed(0)
    probs = torch.full((20000, 1, 1, 1), 51, dtype=torch.uint8)  # 51/255 = 0.2
    dynamic, _ = Preprocessor(binarize="dynamic")(probs)
    assert dynamic.mean().item() == pytest.approx(0.2, abs=0.01)
    img = torch.arange(6, dtype=torch.uint8).reshape(1, 1, 2, 3).repeat(400, 1, 1, 1)
    flipped, _ = Preprocessor(dequantize=False, hflip=True)(img, train=True)
    is_flipped = (flipped[:, 0, 0, 0] > flipped[:, 0, 0, 2]).float()
    assert 0.4 < is_flipped.mean().item() < 0.6
    unflipped, _ = Preprocessor(dequantize=False, hflip=True)(img, train=False)
    assert (unflipped[:, 0, 0, 0] < unflipped[:, 0, 0, 2]).all()


def test_bad_inputs_are_clear_errors():
    with pytest.raises(NonFiniteError):
        Preprocessor()(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ShapeError):
        Preprocessor()(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="scale"):
        Preprocessor(scale="exp")


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_index_loader_covers_each_sample_once_per_epoch(world_size):
    n = 103
    x = torch.arange(n)
    loaders = [
        IndexBatchLoader(x, x, 10, shuffle=True, seed=3, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for epoch in (0, 1):
        seen = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == len(loader)
            seen += [b[0] for b in batches]
        seen = torch.cat(seen)
        # every sample appears; ranks repeat only the few samples that pad them to equal
        # counts (like DistributedSampler), so EM statistics are nearly exact under DDP
        assert set(seen.tolist()) == set(range(n))
        assert len(seen) - n == (-n) % world_size
        assert len({len(loader) for loader in loaders}) == 1
    loaders[0].sampler.set_epoch(0)
    first = torch.cat([b[0] for b in loaders[0]])
    loaders[0].sampler.set_epoch(1)
    second = torch.cat([b[0] for b in loaders[0]])
    loaders[0].sampler.set_epoch(0)
    again = torch.cat([b[0] for b in loaders[0]])
    assert not torch.equal(first, second) and torch.equal(first, again)


def test_index_loader_batches_read_shuffled_samples_in_ascending_rows():
    n, size = 103, 10
    x = torch.arange(n) * 3  # sample i is 3 i, its label i mod 7
    loader = IndexBatchLoader(x, torch.arange(n) % 7, size, shuffle=True, seed=5)
    compositions = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        batches = list(loader)
        for xb, yb in batches:
            assert torch.equal(xb, xb.sort().values)  # one forward read per batch
            assert torch.equal(yb, (xb // 3) % 7)  # labels stay with their samples
        compositions.append([frozenset(xb.tolist()) for xb, _ in batches])
        assert [len(b) for b in compositions[-1]] == [size] * 10 + [3]
    # still shuffled: sorting within a batch keeps which samples share it
    assert compositions[0] != compositions[1]
    assert compositions[0][0] != frozenset(range(0, 3 * size, 3))
