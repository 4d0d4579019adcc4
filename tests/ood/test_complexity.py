"""The complexity term against direct calls of each compressor."""

import bz2
import io
import lzma
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from gmlab.errors import ConfigError
from gmlab.ood.complexity import COMPRESSORS, complexity_bits_per_dim, header_bytes


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    mode_image = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    Image.fromarray(mode_image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 16}]
DIRECT = {
    "png": png_bytes,
    "zlib": lambda a: zlib.compress(a.tobytes(), 9),
    "bz2": lambda a: bz2.compress(a.tobytes(), 9),
    "lzma": lambda a: lzma.compress(a.tobytes(), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS),
}


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8)])
def test_matches_a_direct_call(name, shape):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (2, *shape), generator=gen, dtype=torch.uint8)
    stripes = torch.zeros(2, *shape, dtype=torch.uint8)
    stripes[..., ::3] = 255
    images = torch.cat([noise, stripes])
    zeros = np.zeros(shape, dtype=np.uint8)
    header = len(DIRECT[name](zeros))
    assert header_bytes(name, shape) == header
    expected = [8 * (len(DIRECT[name](a)) - header) / np.prod(shape) for a in images.numpy()]
    got = complexity_bits_per_dim(images, name)
    assert got.shape == (4,) and torch.allclose(got.double(), torch.tensor(expected), atol=1e-6)
    # noise needs about 8 bits per pixel, regular stripes far fewer; an empty image 0
    assert got[:2].min() > 7.0 and got[2:].max() < 2.0
    assert complexity_bits_per_dim(torch.zeros(1, *shape, dtype=torch.uint8), name).item() == 0


def test_bad_input():
    with pytest.raises(ConfigError, match="ood.compressor must be one of"):
        complexity_bits_per_dim(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), "flif")
    with pytest.raises(ConfigError, match="uint8 images"):
        complexity_bits_per_dim(torch.zeros(1, 1, 4, 4), "png")
