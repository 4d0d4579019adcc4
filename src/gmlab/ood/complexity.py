"""Input complexity: the bits/dim a generic lossless compressor spends on an image.

Used by the complexity-corrected score (Serra et al. 2020): bpd(x) - L(x) / D, where
L(x) is the compressed length in bits. 2^-L(x) is a (sub-normalised) universal
"background" density, so the score is minus the log likelihood ratio of the model
against that background, per dimension, in bits.

A compressor's output has a fixed overhead (PNG: signature, IHDR/IDAT/IEND chunks and
the zlib frame; zlib: its 2-byte header and checksum; xz and bz2 larger), which at
28 x 28 is a large share of the output. L(x) subtracts the measured length of an all-zero
image of the same shape ("no information"), so a constant-zero image costs 0 bits.
"""

from __future__ import annotations

import bz2
import functools
import io
import lzma
import zlib

import numpy as np
import torch

from gmlab.errors import ConfigError


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    pil = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _raw(compress):
    return lambda image: compress(np.ascontiguousarray(image).tobytes())


COMPRESSORS = {
    "png": _png,  # PIL: per-row prediction filters + deflate (2-D structure)
    "zlib": _raw(lambda b: zlib.compress(b, 9)),
    "lzma": _raw(
        lambda b: lzma.compress(
            b,
            format=lzma.FORMAT_RAW,
            filters=[{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": 1 << 16}],
        )
    ),
    "bz2": _raw(lambda b: bz2.compress(b, 9)),
}


def compressor(name: str):
    """The compressor `name`: uint8 array [C, H, W] -> bytes."""
    if name not in COMPRESSORS:
        raise ConfigError(f"ood.compressor must be one of {sorted(COMPRESSORS)}, got {name!r}")
    return COMPRESSORS[name]


@functools.lru_cache(maxsize=64)
def header_bytes(name: str, shape: tuple[int, ...]) -> int:
    """Compressed length in bytes of an all-zero uint8 image of `shape` [C, H, W]."""
    return len(compressor(name)(np.zeros(shape, dtype=np.uint8)))


def complexity_bits_per_dim(images: torch.Tensor, name: str = "png") -> torch.Tensor:
    """[B] L(x) / D: 8 (len(compress(x)) - header) / D bits per dimension of uint8 images
    [B, C, H, W] (header: `header_bytes`)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigError(
            f"the complexity score needs uint8 images [B, C, H, W], got {images.dtype} "
            f"{list(images.shape)}"
        )
    compress = compressor(name)
    shape = tuple(images.shape[1:])
    header = header_bytes(name, shape)
    arrays = images.cpu().numpy()
    lengths = torch.tensor([len(compress(a)) for a in arrays], dtype=torch.float64)
    return (8.0 * (lengths - header) / float(np.prod(shape))).float()
