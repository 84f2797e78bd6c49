"""Document sources: iterables of ``(doc_id, text)`` with a cheap, stable ``fingerprint()``.

The fingerprint keys the tokenizer and token caches, so it must change whenever the documents could
have changed (file sizes and modification times, dataset arguments) and must be cheap to compute,
because every run and every distributed rank computes it to find its cache entries.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import annotated_types as at

from lmlab.arguments import checked
from lmlab.data.cache import cache_key
from lmlab.data.checks import check_text_files, not_a_file, problems_named
from lmlab.errors import ArgumentError, InputError

GLOB_CHARS = frozenset("*?[")


def file_stats(files: list[Path]) -> list[tuple[str, int, int]]:
    """(path, size, modification time) per file: changes whenever a file could have changed, costs one stat. A
    file that is gone (deleted since it was found) or cannot be read is an ArgumentError naming it."""
    stats = []
    for path in files:
        try:
            st = path.stat()
        except OSError as e:
            raise ArgumentError("", None, f"{path} cannot be read ({e.strerror})") from None
        stats.append((str(path), st.st_size, st.st_mtime_ns))
    return stats


class Corpus:
    """Base class of document sources."""

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def size(self) -> tuple[int, int] | None:
        """(bytes, documents) when known without reading the documents, else None."""
        return None

    def check(self) -> None:
        """Raise an ArgumentError for documents that cannot be used (before a tokenizer is trained on them)."""


class FileCorpus(Corpus):
    """Documents that are UTF-8 text files, one document per file."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for path in self.files:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ArgumentError("", None, f"{path} is not UTF-8 text ({e.reason}); remove it") from e
            except OSError as e:  # deleted or replaced since the corpus was checked
                raise ArgumentError("", None, f"{path} cannot be read ({e.strerror})") from None
            if text:
                yield str(path), text

    def size(self) -> tuple[int, int]:
        sizes = [size for _, size, _ in file_stats(self.files)]
        return sum(sizes), sum(1 for s in sizes if s)

    def check(self) -> None:
        """Binary, non-UTF-8 and unsplittable files, all named at once (:mod:`lmlab.data.checks`); empty files
        are skipped."""
        check_text_files(self.files)

    def fingerprint(self) -> str:
        return cache_key(kind=type(self).__name__, files=file_stats(self.files))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.files)} files)"


class StdlibCode(FileCorpus):
    """The Python standard library's own ``.py`` sources: a real code corpus (~730 files, 12 MB) anywhere.

    Test folders, site-packages and caches are left out so the corpus is library code only.
    """

    EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})

    def __init__(self):
        root = Path(sysconfig.get_paths()["stdlib"])
        files = []
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d not in self.EXCLUDED_DIRS)
            files += [Path(folder, n) for n in sorted(names) if n.endswith(".py")]
        if not files:
            raise ArgumentError("", None, f"found no .py files in the standard library folder {root}")
        super().__init__(files)


class TextFiles(FileCorpus):
    """The user's own text files: ``paths`` is a file, a folder (recursive), a glob, or a list of those.

    Hidden files and folders (names starting with '.') and ``__pycache__`` are skipped inside folders. A folder
    that a glob matches gives the files under it whose names match the glob's last part (``src/*.py`` matching a
    folder ``x.py/`` gives its ``.py`` files). What is not a regular file (a dangling symlink, a FIFO, a socket)
    is refused, every one named.
    """

    @checked
    def __init__(self, paths: str | os.PathLike | Annotated[list[str | os.PathLike], at.MinLen(1)]):
        entries = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
        files: list[Path] = []
        for entry in entries:
            matched = _expand(str(entry))
            if not matched:
                raise ArgumentError("paths", str(entry), f"matches no file (cwd: {os.getcwd()})")
            files += matched
        problems = [problem for f in sorted(set(files)) if (problem := not_a_file(f))]
        if problems:
            raise ArgumentError("paths", paths, problems_named(problems, len(set(files)), "entries"))
        files = sorted({f.resolve() for f in files})
        if all(size == 0 for _, size, _ in file_stats(files)):
            raise ArgumentError("paths", paths, f"all {len(files)} matched files are empty")
        super().__init__(files)


def _expand(entry: str) -> list[Path]:
    """What one ``paths`` entry names: a file, everything under a folder, or what a glob matches (in a folder it
    matches, the files matching its last part when that is a pattern). Not resolved: a dangling symlink keeps its
    own name."""
    entry = os.path.expanduser(entry)
    pattern = "*"
    if GLOB_CHARS & set(entry):
        candidates = [Path(p) for p in glob.glob(entry, recursive=True)]
        last = Path(entry).name
        pattern = last if GLOB_CHARS & set(last) else "*"
    else:
        candidates = [Path(entry)]
    files = []
    for path in candidates:
        if path.is_dir():
            files += _files_under(path, pattern)
        elif os.path.lexists(path):
            files.append(path)
    return files


def _files_under(folder: Path, pattern: str = "*") -> list[Path]:
    files = []
    for parent, subfolders, names in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "__pycache__"]
        files += [Path(parent, n) for n in names if not n.startswith(".") and fnmatch.fnmatch(n, pattern)]
    return files


class HFDataset(Corpus):
    """A Hugging Face dataset (``datasets.load_dataset``): local json/csv/text/parquet files or a hub name.

    The dataset loads on first iteration, so configuring it costs nothing and a cached run never loads it.
    """

    @checked
    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        text_field: str = "text",
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
    ):
        self.path = path
        self.name = name
        self.split = split
        self.text_field = text_field
        self.data_files = data_files

    def _local_files(self) -> list[Path]:
        """Local files behind the dataset (its data files and a local dataset folder), for the fingerprint."""
        entries = [self.path]
        if isinstance(self.data_files, dict):
            for value in self.data_files.values():
                entries += [value] if isinstance(value, str) else list(value)
        elif self.data_files is not None:
            entries += [self.data_files] if isinstance(self.data_files, str) else list(self.data_files)
        return sorted({f.resolve() for e in entries for f in _expand(str(e))})

    def fingerprint(self) -> str:
        args = dict(path=self.path, name=self.name, split=self.split, data_files=self.data_files)
        return cache_key(kind="HFDataset", args=args, text_field=self.text_field, files=file_stats(self._local_files()))

    def load(self):
        try:
            import datasets
        except ImportError as e:
            raise ImportError("HFDataset needs the Hugging Face `datasets` package: pip install 'lmlab[hf]'") from e
        try:
            dataset = datasets.load_dataset(self.path, self.name, split=self.split, data_files=self.data_files)
        except (ConnectionError, FileNotFoundError) as e:  # offline and not in the local cache, or no such dataset
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{self!r} cannot be loaded: {reason} (a hub dataset must be in the local Hugging Face "
                             "cache when there is no network; or give local files with data_files)") from None
        if self.text_field not in dataset.column_names:
            raise ArgumentError("text_field", self.text_field, f"is not a column of dataset {self.path!r} (split "
                                f"{self.split!r}); available columns: {dataset.column_names}")
        return dataset

    def __iter__(self) -> Iterator[tuple[str, str]]:
        dataset = self.load().select_columns([self.text_field])
        index = 0
        for batch in dataset.iter(batch_size=1024):
            for text in batch[self.text_field]:
                if text:
                    yield f"{self.split}:{index}", text
                index += 1

    def __repr__(self) -> str:
        return f"HFDataset({self.path!r}, name={self.name!r}, split={self.split!r}, text={self.text_field!r})"
