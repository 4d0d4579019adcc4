"""The decoded-data cache file: one split's samples and labels, read as a memory mapping.

Layout (little-endian, one file per split):

    bytes 0-7       magic b"GMLABMM\\0"
    bytes 8-15      uint64 length H of the header
    bytes 16-16+H   UTF-8 JSON header: {"format", "x_shape", "x_dtype", "y_dtype", "meta"}
    x               from the next multiple of 4096 (a page): N * prod(sample shape) values
                    in C order
    y               from the next multiple of 64 after x: N labels

A file of any other size is torn and rejected. `read_mapped` maps x (copy-on-write: the
pages are the kernel's file cache, never anonymous memory, until someone writes to them)
and reads the small labels into memory, so a split larger than RAM streams from disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

MAGIC = b"GMLABMM\0"
FORMAT = 2
PAGE = 4096
_CHUNK = 1 << 26  # bytes per write call


class CacheFileError(ValueError):
    """A cache file that is not a complete file of this format."""


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _check_header(header: dict) -> None:
    """A header from a file is data: numeric dtypes only (never `object`, which would read
    pointers) and a shape of non-negative integers."""
    shape = header["x_shape"]
    if not (isinstance(shape, list) and shape and all(type(s) is int and s >= 0 for s in shape)):
        raise CacheFileError(f"bad x_shape {shape!r}")
    for key in ("x_dtype", "y_dtype"):
        if not isinstance(header[key], str) or np.dtype(header[key]).kind not in "biuf":
            raise CacheFileError(f"{key} {header[key]!r} is not a numeric dtype")


def _layout(header: dict) -> tuple[int, int, int]:
    """(x offset, y offset, file size) of a file with this header."""
    n = header["x_shape"][0]
    x_bytes = int(np.prod(header["x_shape"])) * np.dtype(header["x_dtype"]).itemsize
    head = len(_encode(header))
    x_off = _round_up(16 + head, PAGE)
    y_off = _round_up(x_off + x_bytes, 64)
    return x_off, y_off, y_off + n * np.dtype(header["y_dtype"]).itemsize


def _encode(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True).encode()


def _write_array(f, a: np.ndarray) -> None:
    view = memoryview(np.ascontiguousarray(a)).cast("B")
    for start in range(0, len(view), _CHUNK):
        f.write(view[start : start + _CHUNK])


def write_mapped(path: Path, x: torch.Tensor, y: torch.Tensor, meta: dict) -> None:
    """Write x [N, ...] and y [N] to `path` atomically (temporary file, fsync, rename).

    `meta` is any JSON-able dict, returned by `read_mapped`. Raises OSError; a failed
    write leaves no file behind."""
    xn, yn = x.detach().cpu().numpy(), y.detach().cpu().numpy()
    header = {
        "format": FORMAT,
        "x_shape": list(xn.shape),
        "x_dtype": xn.dtype.str,
        "y_dtype": yn.dtype.str,
        "meta": meta,
    }
    x_off, y_off, size = _layout(header)
    head = _encode(header)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(head)) + head)
            f.write(b"\0" * (x_off - f.tell()))
            _write_array(f, xn)
            f.write(b"\0" * (y_off - f.tell()))
            _write_array(f, yn)
            if f.tell() != size:
                raise OSError(f"wrote {f.tell()} bytes, expected {size}")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def read_header(path: Path) -> dict:
    """The JSON header of a cache file, after checking its magic, format and size."""
    with open(path, "rb") as f:
        start = f.read(16)
        if len(start) < 16 or start[:8] != MAGIC:
            raise CacheFileError("not a gmlab memory-mapped cache file")
        (length,) = struct.unpack("<Q", start[8:])
        if length > os.fstat(f.fileno()).st_size:
            raise CacheFileError(f"header length {length} exceeds the file")
        try:
            header = json.loads(f.read(length))
            if header.get("format") != FORMAT:
                raise CacheFileError(f"format {header.get('format')}, expected {FORMAT}")
            _check_header(header)
            size = _layout(header)[2]
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheFileError(f"bad header ({exc})") from exc
    actual = path.stat().st_size
    if actual != size:
        raise CacheFileError(f"{actual} bytes, its header describes {size} (a torn file)")
    return header


def read_mapped(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x memory-mapped [N, ...], y in memory [N], meta) of a file from `write_mapped`.

    Raises CacheFileError for a file that is not complete."""
    header = read_header(path)
    x_off, y_off, _ = _layout(header)
    shape, n = tuple(header["x_shape"]), header["x_shape"][0]
    if int(np.prod(shape)) == 0:
        x = np.empty(shape, dtype=header["x_dtype"])
    else:  # copy-on-write: writes to the tensor never reach the file
        x = np.memmap(path, dtype=header["x_dtype"], mode="c", offset=x_off, shape=shape)
    y = np.fromfile(path, dtype=header["y_dtype"], count=n, offset=y_off)
    return torch.from_numpy(x), torch.from_numpy(y), header["meta"]
