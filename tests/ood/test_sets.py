"""The offline OOD sets: resized digits, transformed data, noise and constant images."""

import numpy as np
import pytest
import torch
from PIL import Image

from gmlab.data import DigitsDataModule
from gmlab.data.ood import (
    ConstantDataModule,
    Digits28DataModule,
    NoiseDataModule,
    TransformedDataModule,
)
from gmlab.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits28_is_the_digits_resized_into_a_centred_box():
    small = DigitsDataModule().tensors("test")[0]
    big = Digits28DataModule().tensors("test")[0]
    assert big.dtype == torch.uint8 and big.shape == (len(small), 1, 28, 28)
    assert big[..., :4, :].eq(0).all() and big[..., 24:, :].eq(0).all()  # MNIST's border
    assert big[..., :, :4].eq(0).all() and big[..., :, 24:].eq(0).all()
    # the box is PIL's bilinear resize of each digit (an independent implementation)
    for i in range(0, len(small), 37):
        pil = Image.fromarray(small[i, 0].numpy()).resize((20, 20), Image.Resampling.BILINEAR)
        diff = big[i, 0, 4:24, 4:24].int() - torch.from_numpy(np.array(pil)).int()
        assert diff.abs().max() <= 2, i
    full = Digits28DataModule(box=28).tensors("test")[0]
    assert full[..., 0, :].float().sum() > 0  # no border: ink reaches the frame
    with pytest.raises(ConfigError, match="data.box"):
        Digits28DataModule(box=30).tensors("test")


@pytest.mark.parametrize(
    ("transform", "expected"),
    [
        ("invert", lambda x: 255 - x),
        ("hflip", lambda x: x.flip(-1)),
        ("vflip", lambda x: x.flip(-2)),
        ("rot90", lambda x: x.transpose(-1, -2).flip(-2)),
        ("rot180", lambda x: x.flip(-1).flip(-2)),
    ],
)
def test_transformed_datamodule(transform, expected):
    base = DigitsDataModule(val_size=150)
    dm = TransformedDataModule("gmlab.data.DigitsDataModule", transform, val_size=150)
    assert dm.shape == (1, 8, 8) and dm.num_levels == 256
    for split in ("train", "val", "test"):
        x, y = base.tensors(split)
        tx, ty = dm.tensors(split)
        assert torch.equal(tx, expected(x)) and torch.equal(ty, y)
    with pytest.raises(ConfigError, match="data.transform must be one of"):
        TransformedDataModule("gmlab.data.DigitsDataModule", "blur")


def test_noise_and_constant_images():
    noise = NoiseDataModule(shape=(3, 4, 5), train_size=300, test_size=200, val_size=50)
    x, y = noise.tensors("test")
    assert x.shape == (200, 3, 4, 5) and x.dtype == torch.uint8 and y.eq(0).all()
    counts = torch.bincount(x.flatten().long(), minlength=256).float()
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.25  # uniform on 0..255
    assert not torch.equal(noise.tensors("train")[0][:200], x)  # train and test drawn apart
    again = NoiseDataModule(shape=(3, 4, 5), train_size=300, test_size=200, val_size=50)
    assert torch.equal(again.tensors("test")[0], x)  # seeded
    const = ConstantDataModule(shape=(1, 6, 6), test_size=500, num_levels=17, val_size=50)
    c = const.tensors("test")[0]
    assert c.flatten(1).eq(c.flatten(1)[:, :1]).all()  # one value per image
    assert c.max() == 16 and c.min() == 0 and len(c.unique()) == 17
    with pytest.raises(ConfigError, match="num_levels"):
        NoiseDataModule(num_levels=None)
