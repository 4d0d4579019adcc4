"""Datasets on disk: read once with torchvision's reader, cached as one memory-mapped file
per split.

`CachedDataModule` holds everything the image datasets share: the cache file beside the
raw files (written atomically, reused while it is newer than every raw file, read as a
memory mapping so that a split larger than RAM streams from disk; see
`gmlab.data.mapped`), the download through torchvision, and the one-paragraph errors for
missing, truncated and corrupt files. A subclass names its raw files and reads one split.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import logging
import sys
import time
from pathlib import Path

import torch

from gmlab.data import compat
from gmlab.data.base import InMemoryDataModule
from gmlab.data.mapped import CacheFileError, read_mapped, write_mapped
from gmlab.data.split import Split
from gmlab.errors import DataNotFoundError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached tensors change meaning
_unwritable: set[Path] = set()  # cache folders already warned about


# --------------------------------------------------------------------------- cache files
def _fingerprint(sources: list[Path]) -> dict[str, int]:
    """Name -> size in bytes of each existing raw file (-1 for folders)."""
    return {p.name: (p.stat().st_size if p.is_file() else -1) for p in sources if p.exists()}


def _is_stale(path: Path, made_from: dict[str, int], sources: list[Path]) -> bool:
    """Older than any existing raw file in `sources`, or made from files of other names
    or sizes (say, another root sharing the cache_dir). A cache whose raw files were all
    deleted is still used."""
    now = _fingerprint(sources)
    if now and path.stat().st_mtime < max(p.stat().st_mtime for p in sources if p.exists()):
        log.info("cache %s is older than its raw files: decoding again", path)
        return True
    if set(made_from) != {p.name for p in sources} or any(
        made_from[p] != size for p, size in now.items()
    ):
        log.info("cache %s was made from other raw files: decoding again", path)
        return True
    return False


def load_cache(
    path: Path, sources: list[Path], read=read_mapped
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (x memory-mapped, y) at `path`, or None when it is absent, stale or
    unreadable (see `_is_stale`). `read(path) -> (x, y, meta)`: the file format."""
    if not path.is_file():
        return None
    try:
        x, y, meta = read(path)
        made_from = meta["sources"]
        ok = meta.get("format") == CACHE_FORMAT and len(x) == len(y)
    except (OSError, CacheFileError, KeyError, TypeError) as exc:
        log.warning("cache %s is unreadable (%s): decoding again", path, exc)
        return None
    if not ok or _is_stale(path, made_from, sources):
        return None
    return x, y


def save_cache(path: Path, x: torch.Tensor, y: torch.Tensor, sources: list[Path]) -> bool:
    """Write (x, y) to `path` atomically (temporary file + rename); False if not writable.

    A folder without any write permission bit counts as read-only also for root (a
    shared read-only dataset copy is left as it is)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.stat().st_mode & 0o222:
            raise PermissionError(errno.EACCES, "the folder is read-only")
        write_mapped(path, x, y, {"format": CACHE_FORMAT, "sources": _fingerprint(sources)})
        return True
    except OSError as exc:
        if path.parent in _unwritable:
            return False
        _unwritable.add(path.parent)
        read_only = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        log.log(
            logging.INFO if read_only else logging.WARNING,
            "could not write the decoded-data cache %s (%s); the raw files will be decoded "
            "again next time (data.cache_dir=<writable folder> keeps the cache elsewhere)",
            path,
            exc.strerror or exc,
        )
        return False


def corrupt_file_error(dataset: str, path: Path, why: str) -> DataNotFoundError:
    """The error for one damaged raw file."""
    return DataNotFoundError(
        f"{dataset} file {path.resolve()} is truncated or corrupt ({why}). Delete it and run "
        f"with data.download=true to fetch it again, or replace it with a good copy."
    )


class Progress:
    """Throttled progress lines on stderr ("CelebA train: 20000/162770 images, 12 s")."""

    def __init__(self, label: str, total: int, every_s: float = 5.0) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if done >= self.total or now - self.last >= self.every_s:
            self.last = now
            print(
                f"{self.label}: {done}/{self.total} images decoded, {now - self.start:.0f} s",
                file=sys.stderr,
                flush=True,
            )


# ----------------------------------------------------------------------- the DataModule
class CachedDataModule(InMemoryDataModule):
    """An InMemoryDataModule whose splits come from raw files read by torchvision.

    Each split is decoded once into a uint8 tensor and cached as
    `<raw folder>/gmlab_cache_<key>_<split>.mmap` (or under `cache_dir`); later runs map
    the cache while it is newer than the raw files (the pages are read from disk as
    batches need them). A cache of the old `torch.save` format (`.pt`) is converted once.
    Missing files are downloaded by torchvision when `download=True`, otherwise they are
    a `DataNotFoundError` naming the expected paths and how to get them; unreadable files
    are one too.

    Integrity is checked by structure (headers, sizes, parsing), not by md5, so that
    re-packed copies and tiny test files load; torchvision checks md5 sums on download.

    Args (besides InMemoryDataModule's):
        cache: read and write the decoded-tensor cache.
        cache_dir: folder for the cache files (default: beside the raw files).

    Subclasses set `name` and implement `raw_dir`, `raw_files`, `read_split` and `fetch`.
    """

    name: str = ""  # the dataset's name in messages
    split_names: tuple[str, ...] = ("train", "test")

    def __init__(self, cache: bool = True, cache_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._decoded: dict[str, Split] = {}
        self._raw_checked = False

    # ---------------------------------------------------------- for subclasses
    @property
    @abc.abstractmethod
    def raw_dir(self) -> Path:
        """The folder holding the raw files (torchvision's layout under `root`)."""

    @abc.abstractmethod
    def raw_files(self, split: str) -> list[Path]:
        """Every raw file (or folder) the split is read from."""

    @abc.abstractmethod
    def read_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Read one split with torchvision's reader: (uint8 [N, C, H, W], int64 [N])."""

    @abc.abstractmethod
    def fetch(self) -> None:
        """Download the raw files with torchvision (`download=True`)."""

    @property
    def cache_key(self) -> str:
        """Names the decoded variant in the cache file name (e.g. crop and size)."""
        return type(self).__name__.removesuffix("DataModule").lower()

    def how_to_get(self) -> str:
        """What to do about missing files (one or two sentences)."""
        return (
            f"Run with data.download=true to let torchvision download it into "
            f"data.root={self.root.resolve()}, or copy the files to the paths above "
            f"(data.root=<folder> reads a copy elsewhere)."
        )

    def find_bad_file(self, split: str) -> tuple[Path, str] | None:
        """After a read failed: the file to blame and why, if it can be found."""
        return None

    # ----------------------------------------------------------------- loading
    def cache_path(self, split: str) -> Path:
        """`<raw folder>/gmlab_cache_<key>_<split>.mmap`; under a `cache_dir`, which
        several roots may share, the name ends in a hash of the raw folder's absolute path."""
        name = f"gmlab_cache_{self.cache_key}_{split}"
        if self.cache_dir is None:
            return self.raw_dir / f"{name}.mmap"
        tag = hashlib.sha1(str(self.raw_dir.resolve()).encode()).hexdigest()[:10]
        return self.cache_dir / f"{name}_{tag}.mmap"

    def prepare_data(self) -> None:
        """Download (if asked) and decode every split once, writing the caches.

        Lightning calls this on one process per node before `setup`."""
        if self.splits:  # set up already (a second trainer.fit/test)
            return
        for split in self.split_names:
            self._split(split)

    def load_splits(self) -> dict[str, Split]:
        splits = {split: self._split(split) for split in self.split_names}
        self._decoded.clear()  # setup() keeps its own copies
        return splits

    def _split(self, split: str) -> Split:
        if split not in self._decoded:
            self._decoded[split] = self._load_or_decode(split)
        return self._decoded[split]

    def _load_or_decode(self, split: str) -> Split:
        cache, sources = self.cache_path(split), self.raw_files(split)
        if self.cache:
            cached = load_cache(cache, sources)
            if cached is not None:
                return Split(*cached, mapped=True)
            old = compat.old_cache_path(cache)
            decoded = load_cache(old, sources, read=compat.read_torch_save)
            if decoded is not None:
                log.info("converting the old-format cache %s to %s", old, cache.name)
                return self._store(cache, sources, *decoded, replaces=old)
        x, y = self._decode(split)
        return self._store(cache, sources, x, y) if self.cache else Split(x, y)

    def _store(
        self,
        cache: Path,
        sources: list[Path],
        x: torch.Tensor,
        y: torch.Tensor,
        replaces: Path | None = None,
    ) -> Split:
        """Write the cache and map it (the decoded tensors are dropped); (x, y) in memory
        when it cannot be written. Once written, the file it `replaces` is deleted."""
        if not save_cache(cache, x, y, sources):
            return Split(x, y)
        if replaces is not None:
            with contextlib.suppress(OSError):
                replaces.unlink()
        return Split(*read_mapped(cache)[:2], mapped=True)

    def _decode(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_raw_files()
        try:
            x, y = self.read_split(split)
        except DataNotFoundError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            raise self._corrupt_error(split, exc) from exc
        if x.dtype != torch.uint8 or x.dim() != 4 or len(x) != len(y):
            raise self._corrupt_error(
                split, f"decoded {tuple(x.shape)} {x.dtype} images and {len(y)} labels"
            )
        return x.contiguous(), y.long().contiguous()

    def _check_raw_files(self) -> None:
        if self._raw_checked:
            return
        wanted = [p for split in self.split_names for p in self.raw_files(split)]
        missing = [p for p in wanted if not p.exists()]
        if missing and self.download:
            try:
                self.fetch()
            except Exception as exc:  # noqa: BLE001 - any download failure is reported
                raise DataNotFoundError(
                    f"{self.name}: downloading into {self.root.resolve()} failed ({exc}). "
                    f"Put the files there by hand instead: {self._names(wanted)} in "
                    f"{self.raw_dir.resolve()}."
                ) from exc
            missing = [p for p in wanted if not p.exists()]
        if missing:
            raise DataNotFoundError(
                f"{self.name} not found: expected {self._names(wanted)} in "
                f"{self.raw_dir.resolve()}, but {self._names(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing. {self.how_to_get()}"
            )
        self._raw_checked = True

    def _corrupt_error(self, split: str, exc: BaseException | str) -> DataNotFoundError:
        why = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else exc
        bad = self.find_bad_file(split)
        if bad is not None:
            return corrupt_file_error(self.name, *bad)
        return DataNotFoundError(
            f"{self.name} {split} split cannot be read from {self._names(self.raw_files(split))} "
            f"in {self.raw_dir.resolve()}: a file is truncated or corrupt ({why}). Delete the "
            f"damaged file and run with data.download=true to fetch it again, or replace it "
            f"with a good copy."
        )

    def _names(self, paths: list[Path]) -> str:
        def rel(p: Path) -> str:
            try:
                return str(p.relative_to(self.raw_dir))
            except ValueError:
                return str(p)

        return ", ".join(rel(p) for p in dict.fromkeys(paths))
