"""Gated PixelCNN prior: causality without a blind spot, exact log-likelihood, sampling from
the model's joint distribution, temperature, input checks and a short fit."""

from __future__ import annotations

import itertools
import math
import pickle

import pytest
import torch
from scipy.stats import chisquare
from torch.distributions import Categorical

from gmlab.errors import ShapeError
from gmlab.nn.pixelcnn import GatedPixelCNN

pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(num_codes: int, seed: int, scale: float = 0.3, **kwargs) -> GatedPixelCNN:
    """A small float64 model with every parameter drawn as scale * N(0, 1)."""
    model = GatedPixelCNN(num_codes, **kwargs).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def dependency_map(model: GatedPixelCNN, codes: torch.Tensor) -> torch.Tensor:
    """[H, W] codes -> bool [H, W, H, W]: dep[i, j, p, q] iff logits at (i, j) have a
    nonzero gradient with respect to the embedding vector at (p, q).

    The grid is repeated H * W times so that copy b = i * W + j carries the gradient of a
    random projection of the logits at (i, j) only: one backward pass gives all rows."""
    h, w = codes.shape
    embedded = []

    def make_leaf(module, inputs, output):
        leaf = output.detach().requires_grad_()
        embedded.append(leaf)
        return leaf

    handle = model.embedding.register_forward_hook(make_leaf)
    logits = model(codes.expand(h * w, h, w))  # [HW, K, H, W]
    handle.remove()
    weights = torch.randn(h * w, logits.shape[1], generator=torch.Generator().manual_seed(0))
    picked = logits.flatten(2)[torch.arange(h * w), :, torch.arange(h * w)]  # [HW, K]
    (picked * weights.double()).sum().backward()
    return (embedded[0].grad.abs().sum(-1) > 0).view(h, w, h, w)


def test_logits_depend_on_exactly_the_earlier_positions():
    h = w = 5
    # 1 type-A + 4 type-B layers of a 3 x 3 kernel reach at least 4 rows up and 4 columns to
    # either side, so every earlier position of a 5 x 5 grid is in the receptive field.
    model = random_model(5, seed=0, embed_dim=6, channels=8, num_blocks=4, head_channels=16)
    codes = torch.randint(0, 5, (h, w), generator=torch.Generator().manual_seed(1))
    dep = dependency_map(model, codes)
    for i, j, p, q in itertools.product(range(h), range(w), range(h), range(w)):
        earlier = p * w + q < i * w + j  # brute-force raster order
        assert dep[i, j, p, q] == earlier, (i, j, p, q)
    # the blind spot of a masked-conv PixelCNN: upper-right positions such as (i-1, j+2)
    assert dep[2, 0, 1, 2] and dep[2, 0, 1, 4] and dep[4, 1, 3, 4]


def test_type_a_layer_alone_sees_upper_right_but_not_current():
    model = random_model(4, seed=2, embed_dim=4, channels=4, num_blocks=0, head_channels=8)
    dep = dependency_map(model, torch.zeros(3, 3, dtype=torch.long))
    assert dep[1, 1, 0, 2] and dep[1, 1, 0, 0] and dep[1, 1, 1, 0]
    assert not dep[1, 1, 1, 1] and not dep[1, 1, 1, 2] and not dep[0, 0].any()


def test_log_prob_matches_categorical_and_survives_pickling():
    model = random_model(6, seed=3, embed_dim=8, channels=8, num_blocks=2, head_channels=16)
    codes = torch.randint(0, 6, (4, 3, 5), generator=torch.Generator().manual_seed(4))
    logits = model(codes)
    assert logits.shape == (4, 6, 3, 5)
    expected = Categorical(logits=logits.permute(0, 2, 3, 1)).log_prob(codes).sum((1, 2))
    torch.testing.assert_close(model.log_prob(codes), expected)
    restored = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(restored.log_prob(codes), expected)


def test_samples_follow_the_exact_joint_distribution():
    model = random_model(
        2, seed=5, scale=0.8, embed_dim=4, channels=6, num_blocks=2, head_channels=8
    )
    grids = torch.tensor(list(itertools.product(range(2), repeat=4))).view(16, 2, 2)
    probs = model.log_prob(grids).exp().detach()
    torch.testing.assert_close(probs.sum().item(), 1.0, atol=1e-5, rtol=0)
    assert probs.max() > 2 / 16  # far from uniform, so the comparison has teeth

    n = 20000
    samples = model.sample(n, 2, 2, generator=torch.Generator().manual_seed(6))
    assert samples.shape == (n, 2, 2) and samples.dtype == torch.long
    index = (samples.view(n, 4) * torch.tensor([8, 4, 2, 1])).sum(1)  # grids' enumeration
    counts = torch.bincount(index, minlength=16).double()
    assert 0.5 * (counts / n - probs).abs().sum() < 0.02  # total variation
    assert chisquare(counts.numpy(), (n * probs).numpy()).pvalue > 1e-3


def test_small_temperature_gives_the_greedy_decode():
    model = random_model(
        4, seed=7, scale=0.5, embed_dim=6, channels=6, num_blocks=2, head_channels=12
    )
    torch.nn.init.zeros_(model.head[-1].bias)  # so that the argmax depends on the context
    greedy = torch.zeros(1, 3, 4, dtype=torch.long)
    with torch.no_grad():
        for i, j in itertools.product(range(3), range(4)):
            greedy[0, i, j] = model(greedy)[0, :, i, j].argmax()
    assert greedy.unique().numel() > 1
    cold = model.sample(5, 3, 4, temperature=1e-6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(cold, greedy.expand(5, 3, 4))
    warm = model.sample(5, 3, 4, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(warm, cold)  # temperature 1 does sample


def test_bad_inputs_raise_clear_errors():
    model = GatedPixelCNN(3, embed_dim=4, num_blocks=1, head_channels=8)
    with pytest.raises(ShapeError, match="integer dtype"):
        model(torch.zeros(1, 2, 2))
    with pytest.raises(ShapeError, match=r"\[B, H, W\]"):
        model(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        model.log_prob(torch.tensor([[[0, 3]]]))
    with pytest.raises(ValueError, match=r"0\.\.2"):
        model(torch.tensor([[[-1, 0]]]))
    with pytest.raises(ValueError, match="odd"):
        GatedPixelCNN(3, kernel_size=4)
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, 2, 2, temperature=0.0)


def test_fits_a_two_grid_mixture():
    torch.manual_seed(9)
    grids = torch.tensor(
        [
            [[0, 1, 2, 0], [1, 2, 0, 1], [2, 0, 1, 2], [0, 1, 2, 0]],
            [[2, 2, 1, 1], [0, 0, 2, 2], [1, 1, 0, 0], [2, 1, 0, 2]],
        ]
    )
    model = GatedPixelCNN(3, embed_dim=16, num_blocks=2, head_channels=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = -model.log_prob(grids).mean()
        loss.backward()
        opt.step()
    # the best model puts 1/2 on each grid: log p = log(1/2) for both
    assert (model.log_prob(grids) > math.log(0.5) - 0.05).all()
