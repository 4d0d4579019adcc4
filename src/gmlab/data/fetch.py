"""`gmlab-data`: download the datasets a preset needs and check them, for machines whose
compute nodes have no internet (docs/data.md).

    gmlab-data mnist fashion_mnist           # data configs by name (conf/data/<name>.yaml)
    gmlab-data experiment=vae_mnist          # the dataset of a gmlab-train command line
    gmlab-data --check mnist cifar10         # verify the files already there, download nothing
    gmlab-data --root /scratch/data svhn     # into a folder other than $GMLAB_DATA

The files go where gmlab-train reads them: `paths.data_dir` ($GMLAB_DATA, else `data/`),
in torchvision's layout, downloaded by torchvision's own code. Every file that torchvision
lists with an MD5 sum (archives, CIFAR-10's batches, SVHN's .mat files, CelebA's lists) is
checked against it; a file without one is checked against its verified archive beside it
(`X.gz` decompresses to `X`; `X.zip` holds every file of folder `X` with its size). A
missing or corrupt file is named, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from gmlab.errors import ConfigError, DataNotFoundError

CHUNK = 1 << 20


@dataclass
class Report:
    """What a check found in one dataset's folder."""

    name: str
    folder: Path
    verified: int = 0  # files matched against a checksum or a verified archive
    unverified: list[Path] = field(default_factory=list)  # present, nothing to check against
    missing: list[Path] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # "path: why"

    def lines(self, at_most: int = 20) -> list[str]:
        out = [f"{self.name}: missing {p}" for p in self.missing[:at_most]]
        if len(self.missing) > at_most:
            out.append(f"{self.name}: ... and {len(self.missing) - at_most} more missing")
        out += [f"{self.name}: corrupt {why}" for why in self.corrupt]
        if not out:
            note = f"; {len(self.unverified)} present without one (no archive beside them)"
            out = [
                f"{self.name}: ok in {self.folder}: {self.verified} files match their checksums"
                + note * bool(self.unverified)
            ]
        return out


def md5_of(path: Path, opener=open) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with opener(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def torchvision_md5(reader: type) -> dict[str, str]:
    """{file name: MD5} from a torchvision dataset class's own resource lists."""
    from torchvision import datasets

    if issubclass(reader, datasets.MNIST):  # and FashionMNIST: the .gz archives
        return dict(reader.resources)
    if issubclass(reader, datasets.CIFAR10):
        sums = {name: md5 for name, md5 in reader.train_list + reader.test_list}
        return sums | {reader.meta["filename"]: reader.meta["md5"], reader.filename: reader.tgz_md5}
    if issubclass(reader, datasets.SVHN):
        return {name: md5 for _, name, md5 in reader.split_list.values()}
    if issubclass(reader, datasets.CelebA):
        return {name: md5 for _, md5, name in reader.file_list}
    return {}


def check(dm) -> Report:
    """Check the raw files of a `CachedDataModule` (see the module docstring)."""
    sums = torchvision_md5(dm.reader)
    wanted = list(dict.fromkeys(p for split in dm.split_names for p in dm.raw_files(split)))
    report = Report(dm.name, dm.raw_dir)

    def verify(path: Path) -> bool:
        got = md5_of(path)
        if got != sums[path.name]:
            report.corrupt.append(f"{path}: md5 {got}, expected {sums[path.name]}")
            return False
        report.verified += 1
        return True

    archives = {folder / name for folder in (dm.raw_dir, dm.root) for name in sums}
    good = {p for p in archives - set(wanted) if p.is_file() and verify(p)}
    for path in wanted:
        if not path.exists():
            report.missing.append(path)
        elif path.name in sums:
            verify(path)
        elif (gz := path.with_name(path.name + ".gz")) in good:
            if md5_of(gz, gzip.open) != md5_of(path):
                report.corrupt.append(f"{path}: differs from its verified archive {gz.name}")
            else:
                report.verified += 1
        elif (zipped := path.with_name(path.name + ".zip")) in good:
            _compare_with_zip(path, zipped, report)
        else:
            report.unverified.append(path)
    return report


def _compare_with_zip(folder: Path, archive: Path, report: Report) -> None:
    """Every file of `archive` must be under folder's parent with the size it has there."""
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
    for member in members:
        path = folder.parent / member.filename
        if not path.is_file():
            report.missing.append(path)
        elif path.stat().st_size != member.file_size:
            report.corrupt.append(
                f"{path}: {path.stat().st_size} bytes, {member.file_size} in {archive.name}"
            )
        else:
            report.verified += 1


# ------------------------------------------------------------------------ datasets
def datamodules(args: list[str], root: str | None) -> list:
    """The file-backed DataModules named by `args`: data config names, or one gmlab-train
    command line (`key=value` overrides); bundled and synthetic data need no files."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from gmlab.data.cached import CachedDataModule
    from gmlab.utils.runs import PROJECT_ROOT

    os.environ.setdefault("GMLAB_ROOT", str(PROJECT_ROOT))
    extra = [f"paths.data_dir={Path(root).resolve()}"] if root else []
    presets = [a for a in args if "=" in a]
    commands = [[f"data={a}"] for a in args if "=" not in a] + ([presets] if presets else [])
    names = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "data").glob("*.yaml"))
    found = {}
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        for command in commands:
            bad = [o[5:] for o in command if o.startswith("data=") and o[5:] not in names]
            if bad:
                raise ConfigError(f"no data config {bad[0]!r}; one of {', '.join(names)}")
            try:
                cfg = compose("train", overrides=command + extra)
            except HydraException as exc:
                raise ConfigError(f"{' '.join(command)}: {exc}") from exc
            dm = instantiate(cfg.data)
            dm = getattr(dm, "inner", dm)  # a transformed dataset reads its source's files
            if not isinstance(dm, CachedDataModule):
                print(f"{' '.join(command)}: {type(dm).__name__} needs no files")
                continue
            found.setdefault((type(dm), dm.root, getattr(dm, "extra", False)), dm)
    return list(found.values())


def download(dm) -> Report:
    """Fetch what is missing with torchvision's download; never overwrite a corrupt file."""
    report = check(dm)
    if report.corrupt or not report.missing:
        return report
    print(f"{dm.name}: downloading into {dm.root.resolve()}", flush=True)
    try:
        dm.fetch()
    except Exception as exc:  # noqa: BLE001 - any download failure becomes one error line
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataNotFoundError(
            f"{dm.name}: downloading into {dm.root.resolve()} failed ({reason}). Without "
            f"internet, run gmlab-data on a machine that has it (a cluster's login node) and "
            f"copy the folder, or set GMLAB_DATA to it (docs/data.md)."
        ) from exc
    return check(dm)


def main(argv: list[str] | None = None) -> None:
    from gmlab.utils.cli import user_errors

    parser = argparse.ArgumentParser(
        prog="gmlab-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="+", help="data config names, or gmlab-train overrides")
    parser.add_argument("--root", help="data folder (default: $GMLAB_DATA, else data/)")
    parser.add_argument("--check", action="store_true", help="verify only, download nothing")
    args = parser.parse_args(argv)
    with user_errors():
        run = check if args.check else download
        reports = [run(dm) for dm in datamodules(args.what, args.root)]
        for line in (line for r in reports for line in r.lines()):
            print(line, flush=True)
        missing = sum(len(r.missing) for r in reports)
        corrupt = sum(len(r.corrupt) for r in reports)
        if missing or corrupt:
            todo = "delete the corrupt files, then " * bool(corrupt)
            where = "without --check, on a machine with internet" if args.check else "again"
            raise DataNotFoundError(
                f"{missing} file(s) missing, {corrupt} corrupt (listed above): {todo}run "
                f"gmlab-data {where}."
            )


if __name__ == "__main__":
    main()
