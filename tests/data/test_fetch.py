"""gmlab-data (gmlab.data.fetch) on tiny files in each dataset's real layout: presets resolve
to their datasets, --check names a missing or corrupt file against torchvision's MD5 lists
(or sums of the files written here, put into those lists), and a download without network
is one error line."""

from __future__ import annotations

import gzip
import hashlib
import socket
import zipfile

import pytest
from torchvision import datasets

from gmlab.data import FashionMNISTDataModule, MNISTDataModule, SVHNDataModule
from gmlab.data.fetch import datamodules, main

pytestmark = pytest.mark.usefixtures("one_thread")


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `gmlab-data args...` in this process."""
    try:
        main(list(args))
        status = 0
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_names_and_presets_resolve_to_the_datasets_they_read(tmp_path):
    found = datamodules(["mnist", "mnist_hflip", "fashion_mnist", "digits"], str(tmp_path))
    assert [type(dm) for dm in found] == [MNISTDataModule, FashionMNISTDataModule]
    assert all(dm.root == tmp_path for dm in found)
    (vae,) = datamodules(["experiment=vae_svhn"], str(tmp_path))
    assert type(vae) is SVHNDataModule and vae.root == tmp_path
    (extra,) = datamodules(["experiment=vae_svhn", "data.extra=true"], str(tmp_path))
    assert [p.name for p in extra.raw_files("train")] == ["train_32x32.mat", "extra_32x32.mat"]


def test_unknown_data_name_is_one_error_line(capsys):
    status, _, err = run(capsys, "--check", "mnits")
    assert status == 1 and "error: no data config 'mnits'; one of" in err and "mnist" in err
    assert "Traceback" not in err


def test_mnist_files_are_checked_against_their_verified_archives(
    tmp_path, monkeypatch, capsys, files
):
    files.write_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    names = [p.name for p in sorted(raw.iterdir())]
    for name in names:
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
    sums = [(f"{name}.gz", md5(raw / f"{name}.gz")) for name in names]
    monkeypatch.setattr(datasets.MNIST, "resources", sums)

    status, out, _ = run(capsys, "--check", "mnist", "--root", str(tmp_path))
    assert status == 0 and f"MNIST: ok in {raw}: 8 files match their checksums" in out

    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1] + b"\xff")  # same size, one value changed
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    (raw / "train-labels-idx1-ubyte").unlink()
    status, out, err = run(capsys, "--check", "mnist", "--root", str(tmp_path))
    assert status == 1
    assert f"MNIST: corrupt {labels}: differs from its verified archive {labels.name}.gz" in out
    assert f"MNIST: corrupt {raw / 'train-images-idx3-ubyte.gz'}: md5 " in out
    assert f"MNIST: missing {raw / 'train-labels-idx1-ubyte'}" in out
    assert len(out.splitlines()) == 3  # the good files are not listed
    assert "error: 1 file(s) missing, 2 corrupt" in err


def test_cifar_files_are_checked_against_torchvision_md5_list(tmp_path, monkeypatch, capsys, files):
    files.write_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    first, real_md5 = datasets.CIFAR10.train_list[0]
    status, out, _ = run(capsys, "--check", "cifar10", "--root", str(tmp_path))
    assert status == 1 and out.count("CIFAR-10: corrupt") == 7  # tiny files, not the real ones
    assert (
        f"CIFAR-10: corrupt {folder / first}: md5 {md5(folder / first)}, expected {real_md5}" in out
    )

    def written(batches):
        return [[name, md5(folder / name)] for name, _ in batches]

    monkeypatch.setattr(datasets.CIFAR10, "train_list", written(datasets.CIFAR10.train_list))
    monkeypatch.setattr(datasets.CIFAR10, "test_list", written(datasets.CIFAR10.test_list))
    meta = dict(datasets.CIFAR10.meta, md5=md5(folder / "batches.meta"))
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)
    status, out, _ = run(capsys, "--check", "cifar10", "--root", str(tmp_path))
    assert status == 0 and f"CIFAR-10: ok in {folder}: 7 files match their checksums" in out

    (folder / "test_batch").unlink()
    status, out, _ = run(capsys, "--check", "cifar10", "--root", str(tmp_path))
    assert status == 1 and out.strip() == f"CIFAR-10: missing {folder / 'test_batch'}"


def test_celeba_image_folder_is_checked_against_its_verified_zip(
    tmp_path, monkeypatch, capsys, files
):
    written = files.write_celeba(tmp_path)
    folder = tmp_path / "celeba"
    with zipfile.ZipFile(folder / "img_align_celeba.zip", "w") as z:
        for path in written["files"]:
            z.write(path, f"img_align_celeba/{path.name}")
    sums = [(i, md5(folder / name), name) for i, _, name in datasets.CelebA.file_list]
    monkeypatch.setattr(datasets.CelebA, "file_list", sums)

    status, out, _ = run(capsys, "--check", "celeba64", "--root", str(tmp_path))
    assert status == 0 and f"CelebA: ok in {folder}: 17 files match their checksums" in out
    written["files"][3].unlink()  # 5 lists + the zip + 11 images, one now gone
    written["files"][5].write_bytes(b"cut")
    status, out, _ = run(capsys, "--check", "celeba64", "--root", str(tmp_path))
    assert status == 1 and f"CelebA: missing {written['files'][3]}" in out
    assert f"CelebA: corrupt {written['files'][5]}: 3 bytes, " in out


def test_download_without_network_is_one_error_line(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    status, _, err = run(capsys, "mnist", "--root", str(tmp_path))
    assert status == 1 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: MNIST: downloading into {tmp_path} failed (")
    assert "Temporary failure in name resolution" in line and "docs/data.md" in line
    assert not list((tmp_path / "MNIST" / "raw").glob("*-ubyte"))
