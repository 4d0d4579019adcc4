"""CelebA through the real DataModule on a tiny image folder with the five list files:
crops and resizes against torchvision's PIL pipeline (the seeds' own transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from gmlab.data import CelebADataModule
from gmlab.data.celeba import crop_region
from gmlab.errors import DataNotFoundError, GmlabError

CELEBA32 = {"image_size": 32, "center_crop": 148}
CELEBA64 = {"image_size": 64, "crop_box": (25, 50, 153, 178)}


def reference(path, variant) -> np.ndarray:
    """RealNVP: CenterCrop(148) -> Resize(32); torch-mfa: PIL crop box -> Resize(64)."""
    img = Image.open(path).convert("RGB")
    if "crop_box" in variant:
        img = transforms.Resize(64)(img.crop(variant["crop_box"]))
    else:
        img = transforms.Compose([transforms.CenterCrop(148), transforms.Resize(32)])(img)
    return np.asarray(img).transpose(2, 0, 1)


def test_crop_boxes():
    assert crop_region(148, None) == (15, 35, 163, 183)  # torchvision's CenterCrop(148)
    assert crop_region(148, [25, 50, 153, 178]) == (25, 50, 153, 178)
    with pytest.raises(GmlabError, match="does not fit the 178x218 images"):
        crop_region(300, None)
    with pytest.raises(GmlabError, match="does not fit"):
        CelebADataModule(crop_box=(0, 0, 200, 200))


@pytest.mark.parametrize("variant", [CELEBA32, CELEBA64], ids=["celeba32", "celeba64"])
def test_splits_labels_and_pixels_match_the_pil_pipeline(celeba_root, variant):
    root, written = celeba_root
    dm = CelebADataModule(root=str(root), decode_threads=2, **variant)
    dm.setup()
    size = variant["image_size"]
    for split, part in (("train", 0), ("val", 1), ("test", 2)):
        x, y = dm.tensors(split)
        rows = np.flatnonzero(written["partition"] == part)
        assert x.dtype == torch.uint8 and x.shape == (len(rows), 3, size, size)
        assert np.array_equal(y.numpy(), written["identity"][rows] - 1)
        for img, row in zip(x.numpy(), rows, strict=True):
            diff = np.abs(img.astype(int) - reference(written["files"][row], variant))
            assert diff.max() <= 2 and diff.mean() < 0.3
    box = "box15-35-163-183_32" if size == 32 else "box25-50-153-178_64"
    assert (root / "celeba" / f"gmlab_cache_celeba_{box}_train.mmap").is_file()


def test_crop_takes_the_box_and_colours_come_back(tmp_path, files):
    # flat colours: JPEG keeps them to within a level or two
    # (two images per split: torchvision's CelebA cannot hold a one-image split)
    colours = [(200, 30, 90), (10, 250, 128), (77, 77, 77)]
    written = files.write_celeba(
        tmp_path, partition=(0, 0, 1, 1, 2, 2), colours=[c for c in colours for _ in "ab"]
    )
    dm = CelebADataModule(root=str(tmp_path), image_size=16, center_crop=100)
    dm.setup()
    for split, colour in zip(("train", "val", "test"), colours, strict=True):
        x = dm.tensors(split)[0].int()
        assert len(x) == 2 and (x - torch.tensor(colour)[None, :, None, None]).abs().max() <= 2
    # an image that is blue inside the torch-mfa box and red outside comes back blue
    img = np.zeros((218, 178, 3), np.uint8)
    img[..., 0] = 255
    img[50:178, 25:153] = (0, 0, 255)
    Image.fromarray(img).save(written["files"][0], quality=100, subsampling=0)
    dm = CelebADataModule(root=str(tmp_path), image_size=8, crop_box=(25, 50, 153, 178))
    dm.setup()
    x = dm.tensors("train")[0][0].int()
    assert x[2].min() >= 240 and x[0].max() <= 15


def test_cache_is_reused(celeba_root, monkeypatch):
    root, _ = celeba_root
    CelebADataModule(root=str(root), **CELEBA32).setup()

    def no_decoding(*args, **kwargs):
        raise AssertionError("JPEGs decoded although the cache is fresh")

    monkeypatch.setattr("gmlab.data.celeba.decode_faces", no_decoding)
    dm = CelebADataModule(root=str(root), **CELEBA32)
    dm.setup()
    assert len(dm.tensors("train")[0]) == 6


def test_missing_folder_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        CelebADataModule(root=str(tmp_path)).setup()
    msg = str(err.value)
    assert str((tmp_path / "celeba").resolve()) in msg
    assert "img_align_celeba" in msg and "list_eval_partition.txt" in msg
    assert "data.download=true" in msg and "\n" not in msg


def test_missing_or_corrupt_image_is_named(celeba_root):
    root, written = celeba_root
    written["files"][3].unlink()
    with pytest.raises(DataNotFoundError, match=f"image {written['files'][3]} is missing"):
        CelebADataModule(root=str(root), cache=False).setup()
    written["files"][3].write_bytes(written["files"][4].read_bytes()[:300])  # truncated JPEG
    with pytest.raises(DataNotFoundError, match=f"image {written['files'][3]} is missing, trunc"):
        CelebADataModule(root=str(root), cache=False).setup()


def test_image_of_the_wrong_size_is_named(celeba_root):
    root, written = celeba_root
    Image.new("RGB", (100, 100)).save(written["files"][0])
    with pytest.raises(DataNotFoundError, match=r"000001.jpg is 100x100, but .* 178x218"):
        CelebADataModule(root=str(root), cache=False).setup()


@pytest.mark.parametrize(
    ("name", "damage", "why"),
    [
        ("identity_CelebA.txt", lambda t: t.replace(" ", " x", 1), "line 1 "),
        ("list_attr_celeba.txt", lambda t: "\n".join(t.splitlines()[:-2]) + "\n", "9 rows"),
    ],
)
def test_corrupt_list_file_is_named(celeba_root, name, damage, why):
    root, _ = celeba_root
    path = root / "celeba" / name
    path.write_text(damage(path.read_text()))
    with pytest.raises(DataNotFoundError) as err:
        CelebADataModule(root=str(root), cache=False).setup()
    msg = str(err.value)
    assert f"file {path.resolve()} is truncated or corrupt" in msg and why in msg
