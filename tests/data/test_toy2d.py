"""2-D point sets: seeded, with the statistics their docstrings promise."""

from __future__ import annotations

import math

import pytest
import torch

from gmlab.data import Preprocessor, Toy2DDataModule
from gmlab.data.toy2d import DATASETS, GAUSSIANS, sample_toy2d
from gmlab.errors import GmlabError

N = 40_000


@pytest.mark.parametrize("name", DATASETS)
def test_reproducible_by_seed_and_shaped(name):
    dm = Toy2DDataModule(dataset=name, train_size=500, test_size=200, val_size=100, seed=4)
    dm.setup()
    again = Toy2DDataModule(dataset=name, train_size=500, test_size=200, val_size=100, seed=4)
    again.setup()
    other = Toy2DDataModule(dataset=name, train_size=500, test_size=200, val_size=100, seed=5)
    other.setup()
    for split, n in (("train", 400), ("val", 100), ("test", 200)):
        x, y = dm.tensors(split)
        assert x.dtype == torch.float32 and x.shape == (n, 2) and y.shape == (n,)
        assert torch.equal(x, again.tensors(split)[0]) and torch.equal(y, again.tensors(split)[1])
        assert not torch.equal(x, other.tensors(split)[0])
        assert torch.isfinite(x).all() and y.min() >= 0 and y.max() < dm.num_classes
    assert not torch.equal(dm.tensors("train")[0][:200], dm.tensors("test")[0])
    points = dm.tensors("train")[0][:8]
    assert torch.equal(Preprocessor()(points)[0], points)  # float points pass through


def test_sample_is_a_prefix_free_function_of_name_size_seed():
    assert torch.equal(sample_toy2d("moons", 100, 0)[0], sample_toy2d("moons", 100, 0)[0])
    assert not torch.equal(sample_toy2d("moons", 100, 0)[0], sample_toy2d("moons", 100, 1)[0])


@pytest.mark.parametrize("name", ["gauss1", "gauss2"])
def test_gaussians_have_the_documented_mean_and_covariance(name):
    x = sample_toy2d(name, N, seed=0)[0].double()
    mean, cov = GAUSSIANS[name]
    assert torch.allclose(x.mean(0), mean.double(), atol=0.06)  # std error 5/sqrt(N) = 0.025
    assert torch.allclose(torch.cov(x.T), cov.double(), rtol=0.05, atol=0.2)


def test_gaussian_parameters():
    assert GAUSSIANS["gauss1"][0].tolist() == [1.0, 2.0]
    assert torch.allclose(GAUSSIANS["gauss1"][1], torch.tensor([[25.0, 0.0], [0.0, 1.0]]))
    # gauss2: the same Gaussian rotated by 45 degrees
    assert torch.allclose(GAUSSIANS["gauss2"][1], torch.tensor([[13.0, 12.0], [12.0, 13.0]]))
    x = sample_toy2d("gauss2", N, seed=1)[0].double() - torch.tensor([1.0, 2.0]).double()
    along = (x @ torch.tensor([1.0, 1.0]).double() / math.sqrt(2)).std()
    across = (x @ torch.tensor([1.0, -1.0]).double() / math.sqrt(2)).std()
    assert abs(along - 5) < 0.1 and abs(across - 1) < 0.03


def test_moons():
    x, y = sample_toy2d("moons", N, seed=0)
    u = (x - torch.tensor([-1.0, -0.2])) / 2  # back to the unit half circles
    outer = u[y == 0]
    inner = u[y == 1] - torch.tensor([1.0, 0.5])
    assert abs((y == 0).float().mean() - 0.5) < 0.02
    for pts, upper in ((outer, True), (inner, False)):
        r = pts.norm(dim=1)
        assert abs(r.mean() - 1) < 0.02 and r.std() < 0.12  # noise std 0.1
        assert ((pts[:, 1] > 0) == upper).float().mean() > 0.9


def test_eight_gaussians():
    x, y = sample_toy2d("8gaussians", N, seed=0)
    angles = torch.arange(8) * (2 * math.pi / 8)
    centres = 4 / math.sqrt(2) * torch.stack([angles.cos(), angles.sin()], 1)
    # neighbouring centres are 6 stds apart: points lie nearest their own centre
    assert (torch.cdist(x, centres).argmin(1) == y).float().mean() > 0.995
    assert torch.allclose((x - centres[y]).std(0), torch.full((2,), 0.5 / math.sqrt(2)), rtol=0.03)
    assert torch.bincount(y, minlength=8).min() > N / 8 * 0.9


def test_checkerboard():
    x, _ = sample_toy2d("checkerboard", N, seed=0)
    assert x.min() >= -4 and x.max() < 4
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = torch.bincount((cells[:, 0] + 2) * 4 + cells[:, 1] + 2, minlength=16)
    assert (counts > 0).sum() == 8 and counts[counts > 0].min() > N / 8 * 0.9


def test_pinwheel_arms_are_rotated_copies():
    x, y = sample_toy2d("pinwheel", N, seed=0)
    means = []
    for k in range(5):
        a = -2 * math.pi * k / 5
        rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        means.append((x[y == k] @ rot.T).mean(0))
    means = torch.stack(means)
    assert torch.allclose(means, means.mean(0).expand(5, 2), atol=0.05)
    assert means.mean(0).norm() > 1.5  # arms leave the origin


def test_unknown_set_lists_the_choices():
    with pytest.raises(GmlabError, match="checkerboard"):
        Toy2DDataModule(dataset="spirals")
