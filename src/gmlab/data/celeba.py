"""CelebA (aligned and cropped faces) from torchvision's folder `<root>/celeba/`.

The 202,599 JPEGs are decoded once, in batches on a thread pool, cropped, resized as a
batch (antialiased bilinear on uint8, as torchvision's Resize does) and cached; decoding
takes minutes, loading the cache takes seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from gmlab.data.cached import CachedDataModule, Progress
from gmlab.errors import DataNotFoundError, GmlabError

IMAGE_DIR = "img_align_celeba"
LIST_FILES = tuple(name for _, _, name in datasets.CelebA.file_list if name.endswith(".txt"))
UNHEADED = ("list_eval_partition.txt", "identity_CelebA.txt")  # no count/header lines
SPLITS = {"train": "train", "val": "valid", "test": "test"}  # gmlab name -> torchvision's
HEIGHT, WIDTH = 218, 178  # every aligned CelebA image


class _CelebA(datasets.CelebA):
    """torchvision's reader, checking that the list files exist instead of their md5 sums
    (they are parsed right after; torchvision still checks md5 sums on download)."""

    def _check_integrity(self) -> bool:
        base = os.path.join(self.root, self.base_folder)
        return all(os.path.isfile(os.path.join(base, n)) for n in LIST_FILES) and os.path.isdir(
            os.path.join(base, IMAGE_DIR)
        )


def crop_region(center_crop: int, box: Sequence[int] | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box in a 178x218 image: `box` if given, else a
    centred square of side `center_crop`.

    `center_crop=148` is torchvision's CenterCrop(148): left 15, top 35 (RealNVP's
    CelebA); `box=(25, 50, 153, 178)` is the PIL crop box of torch-mfa."""
    if box is not None:
        left, top, right, bottom = (int(v) for v in box)
    else:
        left = int(round((WIDTH - center_crop) / 2.0))
        top = int(round((HEIGHT - center_crop) / 2.0))
        right, bottom = left + center_crop, top + center_crop
    if not (0 <= left < right <= WIDTH and 0 <= top < bottom <= HEIGHT):
        raise GmlabError(
            f"CelebA crop box (left, top, right, bottom) = {(left, top, right, bottom)} does "
            f"not fit the {WIDTH}x{HEIGHT} images (data.center_crop / data.crop_box)"
        )
    return left, top, right, bottom


def decode_faces(
    paths: Sequence[Path],
    box: tuple[int, int, int, int],
    size: int,
    threads: int | None = None,
    chunk: int = 1024,
    label: str = "CelebA",
) -> torch.Tensor:
    """Decode JPEGs, crop `box`, resize to size x size: uint8 [N, 3, size, size].

    Chunks of `chunk` images are decoded on a thread pool, each crop copied into one
    channels-last buffer, and the chunk resized in one call (antialiased bilinear on
    uint8, as torchvision's Resize on tensors)."""
    left, top, right, bottom = box
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    crops = np.empty((min(chunk, len(paths)), bottom - top, right - left, 3), dtype=np.uint8)
    progress = Progress(label, len(paths))

    def decode(job: tuple[int, Path]) -> None:
        slot, path = job
        try:
            img = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
        except Exception as exc:  # noqa: BLE001 - named in the user-facing error
            raise DataNotFoundError(
                f"CelebA image {path.resolve()} is missing, truncated or corrupt "
                f"({type(exc).__name__}: {exc}). Restore it from img_align_celeba.zip, or "
                f"delete the folder and run with data.download=true."
            ) from exc
        if img.shape[1:] != (HEIGHT, WIDTH):
            raise DataNotFoundError(
                f"CelebA image {path.resolve()} is {img.shape[2]}x{img.shape[1]}, but the aligned "
                f"CelebA images (img_align_celeba) are all {WIDTH}x{HEIGHT}."
            )
        # decode_jpeg's [3, H, W] result is stored H, W, C: copy the crop with numpy
        # (small torch copies pay for thread start-up on every call)
        crops[slot] = img.permute(1, 2, 0).numpy()[top:bottom, left:right]

    with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
        for start in range(0, len(paths), chunk):
            batch = paths[start : start + chunk]
            list(pool.map(decode, enumerate(batch)))
            hwc = torch.from_numpy(crops[: len(batch)])
            out[start : start + len(batch)] = TF.resize(
                hwc.permute(0, 3, 1, 2), [size, size], antialias=True
            )
            progress.update(start + len(batch))
    return out


class CelebADataModule(CachedDataModule):
    """CelebA: 162,770 train / 19,867 val / 19,962 test RGB faces (the official
    partition), cropped and resized: uint8 [N, 3, image_size, image_size]; labels are
    the 10,177 identities, 0-based.

    celeba32: `center_crop=148, image_size=32` (RealNVP); celeba64:
    `crop_box=(25, 50, 153, 178), image_size=64` (torch-mfa). Read by
    `torchvision.datasets.CelebA(root)` from `<root>/celeba/` (img_align_celeba/*.jpg and
    the five list files). The official validation partition is the val split.

    Args (besides CachedDataModule's):
        image_size: output height and width.
        center_crop: side of a centred square crop (used when crop_box is None).
        crop_box: (left, top, right, bottom) crop box, or None.
        decode_threads: threads decoding JPEGs (default: all cores).
    """

    name = "CelebA"
    split_names = ("train", "val", "test")
    reader = _CelebA

    def __init__(
        self,
        image_size: int = 32,
        center_crop: int = 148,
        crop_box: Sequence[int] | None = None,
        decode_threads: int | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("shape", (3, image_size, image_size))
        kwargs.setdefault("num_classes", 10177)
        super().__init__(**kwargs)
        self.image_size = image_size
        self.box = crop_region(center_crop, crop_box)
        self.decode_threads = decode_threads

    @property
    def raw_dir(self) -> Path:
        return self.root / self.reader.base_folder

    @property
    def cache_key(self) -> str:
        return f"celeba_box{'-'.join(map(str, self.box))}_{self.image_size}"

    def raw_files(self, split: str) -> list[Path]:
        return [self.raw_dir / name for name in LIST_FILES] + [self.raw_dir / IMAGE_DIR]

    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = self.reader(str(self.root), split=SPLITS[split], target_type="identity")
        paths = [self.raw_dir / IMAGE_DIR / name for name in ds.filename]
        x = decode_faces(
            paths,
            self.box,
            self.image_size,
            threads=self.decode_threads,
            label=f"CelebA {split} ({self.image_size}x{self.image_size})",
        )
        return x, ds.identity[:, 0].long() - 1

    def fetch(self) -> None:
        self.reader(str(self.root), split="all", download=True)

    def how_to_get(self) -> str:
        return (
            f"Download img_align_celeba.zip and the list files ({', '.join(LIST_FILES)}) from "
            f"the CelebA site (mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unpack them as "
            f"{self.raw_dir.resolve()}/img_align_celeba/000001.jpg ... and "
            f"{self.raw_dir.resolve()}/list_eval_partition.txt etc., or run with "
            f"data.download=true (torchvision fetches them from Google Drive; needs the gdown "
            f"package and often hits its quota)."
        )

    def find_bad_file(self, split: str) -> tuple[Path, str] | None:
        rows = {}
        for name in LIST_FILES:
            path = self.raw_dir / name
            header = 0 if name in UNHEADED else 2
            try:
                lines = path.read_text().splitlines()[header:]
            except (OSError, UnicodeDecodeError) as exc:
                return path, f"{type(exc).__name__}: {exc}"
            for number, line in enumerate(lines, header + 1):
                fields = line.split()
                if fields and not all(v.lstrip("-").isdigit() for v in fields[1:]):
                    return path, f"line {number} {line[:50]!r} is not '<image> <integers>'"
            rows[name] = sum(1 for line in lines if line.strip())
        n = rows[UNHEADED[0]]
        for name, count in rows.items():
            if count != n:
                return self.raw_dir / name, f"{count} rows, but {UNHEADED[0]} has {n}"
        return None
