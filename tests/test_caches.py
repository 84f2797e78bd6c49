"""Cache entries checked against their manifests: a really damaged file (truncated, emptied, overwritten, changed
in place, deleted) is found, named in one warning and rebuilt to the same bytes; a reader is told in one line;
entries of the previous format are rebuilt; real processes building one entry at once all succeed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import stdlib_modules

from lmlab.data import LMDataModule, TextFiles
from lmlab.data.cache import MANIFEST_FILE, CacheError, entry_problem
from lmlab.data.pairs import CodePairsDataModule

FILES = ("bisect.py", "colorsys.py", "fnmatch.py", "getopt.py", "heapq.py", "shlex.py", "textwrap.py", "sched.py")
SIZES = dict(vocab_size=300, block_size=16, batch_size=2, val_fraction=0.2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return stdlib_modules(tmp_path_factory.mktemp("corpus"), FILES)


def datamodule(corpus: Path, cache: Path, kind=LMDataModule):
    return kind(TextFiles(str(corpus)), cache_dir=str(cache), **SIZES)


@pytest.fixture(scope="module")
def pristine(corpus, tmp_path_factory) -> Path:
    """A cache prepared once (tokenizer, packed tokens, code pairs); each test damages a copy of it."""
    cache = tmp_path_factory.mktemp("pristine")
    datamodule(corpus, cache).prepare_data()
    datamodule(corpus, cache, CodePairsDataModule).prepare_data()
    return cache


@pytest.fixture
def cache(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "cache"))


def entry(cache: Path, kind: str) -> Path:
    (folder,) = (cache / kind).iterdir()
    return folder


def change_one_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


DAMAGES = {  # what is done to the file, what the warning says
    "truncated": (lambda p: os.truncate(p, p.stat().st_size // 2), "bytes, its manifest records"),
    "emptied": (lambda p: os.truncate(p, 0), "has 0 bytes, its manifest records"),
    "overwritten with garbage": (lambda p: p.write_bytes(b"{garbage\x00"), "bytes, its manifest records"),
    "one byte changed": (change_one_byte, "has another SHA-256 than its manifest records"),
    "deleted": (lambda p: p.unlink(), "is missing"),
}
FILES_OF_ENTRIES = [("tokenizers", "tokenizer.json"), ("tokens", "tokens.bin")]
OTHER_FILES = [("tokenizers", "tokenizer_config.json"), ("tokens", "meta.json"), ("tokens", "audit.json"),
               ("pairs", "pairs.npz"), ("pairs", "meta.json")]


def prepare_all(corpus: Path, cache: Path) -> None:
    datamodule(corpus, cache).prepare_data()
    datamodule(corpus, cache, CodePairsDataModule).prepare_data()


def content(path: Path) -> bytes | dict:
    """The file's bytes; the audit without the time it took."""
    if path.name != "audit.json":
        return path.read_bytes()
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "seconds"}


def assert_rebuilt(cache: Path, pristine: Path, kind: str, name: str, said: str, caplog) -> None:
    """One warning naming the entry, the file and what was wrong; the entry sound again, byte for byte."""
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    folder = entry(cache, kind)
    assert len(warnings) == 1 and warnings[0].startswith(f"cache entry {folder}: {name} "), warnings
    assert said in warnings[0] and warnings[0].endswith("; rebuilding it"), warnings
    assert entry_problem(folder) is None
    assert content(folder / name) == content(entry(pristine, kind) / name)
    assert sorted(p.name for p in (cache / kind).iterdir()) == [folder.name]  # nothing left aside


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind,name", FILES_OF_ENTRIES)
def test_a_damaged_entry_is_named_and_rebuilt(corpus, pristine, cache, kind, name, damage, caplog):
    do, said = DAMAGES[damage]
    do(entry(cache, kind) / name)
    with caplog.at_level(logging.WARNING):
        prepare_all(corpus, cache)
    assert_rebuilt(cache, pristine, kind, name, said, caplog)


@pytest.mark.parametrize("kind,name", OTHER_FILES)
def test_every_file_of_an_entry_is_checked(corpus, pristine, cache, kind, name, caplog):
    DAMAGES["overwritten with garbage"][0](entry(cache, kind) / name)
    with caplog.at_level(logging.WARNING):
        prepare_all(corpus, cache)
    assert_rebuilt(cache, pristine, kind, name, "bytes, its manifest records", caplog)


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_an_entry_without_a_sound_manifest_is_rebuilt(corpus, pristine, cache, damage, caplog):
    """An entry of the previous format has no manifest: it is stale, rebuilt with its own line."""
    for kind in ("tokenizers", "tokens"):
        manifest = entry(cache, kind) / MANIFEST_FILE
        manifest.unlink() if damage == "deleted" else manifest.write_text("[not a manifest")
    with caplog.at_level(logging.WARNING):
        datamodule(corpus, cache).prepare_data()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    said = "is missing (an entry written before" if damage == "deleted" else "is unreadable (JSONDecodeError"
    assert [w.split(": ", 1)[1].startswith(f"{MANIFEST_FILE} {said}") for w in warnings] == [True, True], warnings
    for kind in ("tokenizers", "tokens"):
        assert entry_problem(entry(cache, kind)) is None


def test_an_entry_that_is_a_file_is_replaced(corpus, pristine, cache, caplog):
    folder = entry(cache, "tokens")
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        datamodule(corpus, cache).prepare_data()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"cache entry {folder}: is not a directory; rebuilding it"]
    assert entry_problem(folder) is None


def test_a_reader_names_a_file_damaged_after_prepare_in_one_line(corpus, cache):
    """setup (every rank) and the tokenizer's readers check sizes and small files' checksums; they do not rebuild."""
    dm = datamodule(corpus, cache)
    dm.prepare_data()
    tokens = entry(cache, "tokens") / "tokens.bin"
    os.truncate(tokens, 1000)
    with pytest.raises(CacheError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"cache entry {tokens.parent}: tokens.bin has 1000 bytes")
    assert message.endswith("run the command again to rebuild it")
    DAMAGES["one byte changed"][0](entry(cache, "tokenizers") / "tokenizer.json")
    with pytest.raises(CacheError, match="tokenizer.json has another SHA-256"):
        datamodule(corpus, cache).load_tokenizer()


BUILD = """
import sys
from lmlab.data import LMDataModule, TextFiles
dm = LMDataModule(TextFiles(sys.argv[1]), cache_dir=sys.argv[2], **eval(sys.argv[3]))
dm.prepare_data()
dm.setup("fit")
print(dm.packed.n_tokens)
"""


def test_processes_building_or_rebuilding_one_entry_at_once_all_succeed(corpus, pristine, tmp_path):
    """Real processes, started together: on an empty cache all build; on a damaged one all find it damaged,
    move it aside and rebuild; one entry stays, sound, with nothing left beside it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    for start in ("empty", "damaged"):
        cache = tmp_path / start
        if start == "damaged":
            shutil.copytree(pristine, cache)
            os.truncate(entry(cache, "tokens") / "tokens.bin", 10)
        processes = [subprocess.Popen([sys.executable, "-c", BUILD, str(corpus), str(cache), repr(SIZES)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(3)]
        results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
        assert [code for code, _, _ in results] == [0, 0, 0], results
        assert len({out for _, out, _ in results}) == 1
        for kind in ("tokenizers", "tokens"):
            assert [p.name for p in (cache / kind).iterdir()] == [entry(cache, kind).name]
            assert entry_problem(entry(cache, kind)) is None
        assert (entry(cache, "tokens") / "tokens.bin").read_bytes() == (
            entry(pristine, "tokens") / "tokens.bin").read_bytes()


def test_train_py_rebuilds_damaged_entries_with_one_line_each(run_train_py, corpus_dir, tmp_path):
    """A real run on a cache whose tokenizer.json and tokens.bin were cut short: two warnings, then it trains."""
    cache = tmp_path / "own_cache"
    run_train_py(f"paths.cache_dir={cache}", "trainer.max_steps=3", run_dir=tmp_path / "first")
    os.truncate(entry(cache, "tokenizers") / "tokenizer.json", 100)
    os.truncate(entry(cache, "tokens") / "tokens.bin", 100)
    proc = run_train_py(f"paths.cache_dir={cache}", "trainer.max_steps=3", run_dir=tmp_path / "second")
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "lmlab.data.cache" in line]
    assert len(lines) == 2, lines
    assert "tokenizer.json has 100 bytes" in lines[0] and "tokens.bin has 100 bytes" in lines[1]
    assert all(line.endswith("(truncated); rebuilding it") for line in lines)
