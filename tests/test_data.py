"""The data pipeline on real text: a handful of stdlib source files, a tiny BPE, short blocks."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import STDLIB, make_dm, stdlib_modules
from transformers import AutoTokenizer

from lmlab.data import EOS_TOKEN, PAD_TOKEN, HFDataset, LMDataModule, StdlibCode, TextFiles, train_tokenizer
from lmlab.data.packing import pack_corpus
from lmlab.data.tokenizer import cached_tokenizer, tokenizer_cache_dir

# small, stable modules present in every CPython 3.11+: ~110 kB of real code
FILES = ("bisect.py", "colorsys.py", "fnmatch.py", "getopt.py", "glob.py", "heapq.py", "queue.py", "sched.py",
         "shlex.py", "textwrap.py")
VOCAB, BLOCK, BATCH = 384, 32, 4
UNSEEN = "héllo → 世界 🙂\tzürich\r\n  \x00end"


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory) -> Path:
    """The ten stdlib modules of FILES, by their own names (conftest's corpus_dir holds whole packages)."""
    return stdlib_modules(tmp_path_factory.mktemp("modules"), FILES)


@pytest.fixture(scope="module")
def texts(modules_dir) -> dict[str, str]:
    return {name: (modules_dir / name).read_text(encoding="utf-8") for name in FILES}


@pytest.fixture(scope="module")
def data_cache_dir(tmp_path_factory) -> Path:
    """A cache of this module's own, so the cache tests see only the entries these tests make."""
    return tmp_path_factory.mktemp("cache")


def lm_dm(corpus_dir, cache_dir, **settings) -> LMDataModule:
    sizes = dict(vocab_size=VOCAB, block_size=BLOCK, batch_size=BATCH)
    return make_dm(LMDataModule, corpus_dir, cache_dir, **{**sizes, **settings})


@pytest.fixture(scope="module")
def dm(modules_dir, data_cache_dir) -> LMDataModule:
    dm = lm_dm(modules_dir, data_cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def documents_in(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """The token stream cut after every EOS; each piece must be one whole document."""
    ends = np.flatnonzero(tokens == eos_id) + 1
    return np.split(tokens, ends)[:-1] if len(ends) else []


# ----- corpora


def test_stdlib_code_is_library_code_only():
    corpus = StdlibCode()
    assert 300 < len(corpus.files) < 3000
    for f in corpus.files:
        assert f.suffix == ".py"
        assert not StdlibCode.EXCLUDED_DIRS & set(f.relative_to(STDLIB).parts[:-1]), f
    assert STDLIB / "textwrap.py" in corpus.files
    assert corpus.fingerprint() == StdlibCode().fingerprint()


def test_text_files_accepts_a_file_a_folder_a_glob_and_a_list(modules_dir, texts, tmp_path):
    by_folder = TextFiles(str(modules_dir))
    by_glob = TextFiles(str(modules_dir / "*.py"))
    by_list = TextFiles([modules_dir / n for n in FILES])
    assert by_folder.files == by_glob.files == by_list.files
    assert by_folder.fingerprint() == by_glob.fingerprint()
    assert dict((Path(doc_id).name, text) for doc_id, text in by_folder) == texts
    assert [text for _, text in TextFiles(str(modules_dir / "heapq.py"))] == [texts["heapq.py"]]

    # hidden files are skipped inside folders; editing a file changes the fingerprint
    (copy := tmp_path / "c").mkdir()
    shutil.copy(modules_dir / "bisect.py", copy / "bisect.py")
    (copy / ".hidden").write_text("not a document")
    corpus = TextFiles(str(copy))
    assert [f.name for f in corpus.files] == ["bisect.py"]
    before = corpus.fingerprint()
    with open(copy / "bisect.py", "a") as f:
        f.write("# edited\n")
    assert corpus.fingerprint() != before


@pytest.mark.parametrize("kind", ["missing", "glob_matches_nothing", "empty_list", "all_empty"])
def test_text_files_rejects_bad_paths(kind, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    paths = {
        "missing": str(tmp_path / "nope"),
        "glob_matches_nothing": str(tmp_path / "*.md"),
        "empty_list": [],
        "all_empty": str(tmp_path),
    }[kind]
    with pytest.raises(ValueError, match=r"^paths="):
        TextFiles(paths)


def test_hf_dataset_reads_local_json_lines(texts, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    path = tmp_path / "docs.jsonl"
    rows = [{"content": texts[n], "stars": i} for i, n in enumerate(FILES[:4])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    corpus = HFDataset("json", data_files=str(path), text_field="content")
    assert [text for _, text in corpus] == [r["content"] for r in rows]
    fingerprint = corpus.fingerprint()
    assert fingerprint == HFDataset("json", data_files=str(path), text_field="content").fingerprint()
    with open(path, "a") as f:
        f.write(json.dumps({"content": "x = 1\n", "stars": 9}) + "\n")
    assert corpus.fingerprint() != fingerprint

    with pytest.raises(ValueError, match=r"^text_field='text': .*\['content', 'stars'\]"):
        next(iter(HFDataset("json", data_files=str(path))))

    dm = LMDataModule(corpus, vocab_size=300, block_size=16, batch_size=2, val_fraction=0.25,
                      cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    assert dm.packed.n_documents == 5


# ----- tokenizer


def test_byte_level_bpe_round_trips_any_text(texts):
    tokenizer = train_tokenizer(texts.values(), VOCAB)
    assert len(tokenizer) <= VOCAB
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    for text in [*texts.values(), UNSEEN]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.eos_token_id not in ids  # EOS is added by packing, not by encode
    # merges were learned: code compresses well below one token per byte
    n_bytes = sum(len(t.encode()) for t in texts.values())
    n_tokens = sum(len(tokenizer.encode(t)) for t in texts.values())
    assert n_tokens < 0.6 * n_bytes


def test_saved_tokenizer_reloads_with_auto_tokenizer(dm, texts, tmp_path):
    dm.save_tokenizer(tmp_path / "tok")
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    for text in [texts["shlex.py"], UNSEEN]:
        assert reloaded.encode(text) == dm.tokenizer.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == text
    assert (reloaded.eos_token, reloaded.pad_token) == (EOS_TOKEN, PAD_TOKEN)
    assert reloaded.eos_token_id == dm.tokenizer.eos_token_id


# ----- packing and split


def test_packed_tokens_are_whole_documents_joined_by_eos(dm, texts):
    tokens = np.asarray(dm.packed.tokens())
    assert tokens.dtype == np.uint16 and tokens[-1] == dm.tokenizer.eos_token_id
    eos = dm.tokenizer.eos_token_id
    train = [dm.tokenizer.decode(d[:-1]) for d in documents_in(tokens[: dm.packed.val_start], eos)]
    val = [dm.tokenizer.decode(d[:-1]) for d in documents_in(tokens[dm.packed.val_start :], eos)]
    assert sorted(train + val) == sorted(texts.values())  # each document exactly once, split at a boundary
    assert train and val and not set(train) & set(val)
    assert len(val) == dm.packed.n_val_documents
    assert 0.05 < dm.packed.n_val_tokens / dm.packed.n_tokens < 0.45


def test_split_is_deterministic_and_seeded(dm, modules_dir, tmp_path):
    again = pack_corpus(dm.corpus, dm.tokenizer, tmp_path / "again", val_fraction=0.2, split_seed=0)
    assert again.folder != dm.packed.folder
    assert again.tokens_path.read_bytes() == dm.packed.tokens_path.read_bytes()
    other = pack_corpus(dm.corpus, dm.tokenizer, tmp_path / "other", val_fraction=0.2, split_seed=1)
    eos = dm.tokenizer.eos_token_id
    order = [d.tobytes() for d in documents_in(np.asarray(dm.packed.tokens()), eos)]
    other_order = [d.tobytes() for d in documents_in(np.asarray(other.tokens()), eos)]
    assert order != other_order and sorted(order) == sorted(other_order)


def test_a_single_document_corpus_is_cut_at_the_fraction(modules_dir, tmp_path):
    dm = LMDataModule(TextFiles(str(modules_dir / "textwrap.py")), vocab_size=300, block_size=16, batch_size=2,
                      val_fraction=0.1, cache_dir=str(tmp_path))
    dm.prepare_data()
    dm.setup()
    assert dm.packed.n_documents == 1
    assert dm.packed.n_val_tokens == pytest.approx(0.1 * dm.packed.n_tokens, abs=1)


def test_blocks_are_contiguous_windows_that_tile_each_split(dm):
    tokens = torch.from_numpy(np.asarray(dm.packed.tokens()).astype(np.int64))
    for blocks, start, stop in [(dm.train_blocks, 0, dm.packed.val_start),
                                (dm.val_blocks, dm.packed.val_start, dm.packed.n_tokens)]:
        assert len(blocks) == (stop - start - 1) // BLOCK
        for i in [0, 1, len(blocks) - 1]:
            window = blocks[i]
            assert window.dtype == torch.long and window.shape == (BLOCK + 1,)
            assert torch.equal(window, tokens[start + i * BLOCK : start + (i + 1) * BLOCK + 1])
        # inputs x[:-1] tile the split and targets x[1:] are the same tokens shifted by one:
        # consecutive windows share exactly their boundary token
        assert torch.equal(torch.cat([blocks[i][:-1] for i in range(len(blocks))]),
                           tokens[start : start + len(blocks) * BLOCK])
        assert torch.equal(torch.cat([blocks[i][1:] for i in range(len(blocks))]),
                           tokens[start + 1 : start + len(blocks) * BLOCK + 1])
        assert start + len(blocks) * BLOCK + 1 <= stop  # never reads across the split
        with pytest.raises(IndexError):
            blocks[len(blocks)]
    batch = next(iter(dm.val_dataloader()))
    assert batch.shape == (BATCH, BLOCK + 1)
    assert torch.equal(batch, torch.stack([dm.val_blocks[i] for i in range(BATCH)]))


# ----- cache


def entry_state(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def test_cache_is_reused_and_keyed(dm, modules_dir, data_cache_dir):
    tokenizer_file = tokenizer_cache_dir(dm.corpus, VOCAB, data_cache_dir) / "tokenizer.json"
    before = entry_state(tokenizer_file), entry_state(dm.packed.tokens_path)

    same = lm_dm(modules_dir, data_cache_dir)
    same.prepare_data()
    same.setup()
    assert (entry_state(tokenizer_file), entry_state(same.packed.tokens_path)) == before
    assert same.packed == dm.packed

    bigger_vocab = lm_dm(modules_dir, data_cache_dir, vocab_size=VOCAB + 64)
    bigger_vocab.prepare_data()
    bigger_vocab.setup()
    assert bigger_vocab.packed.folder != dm.packed.folder
    assert len(bigger_vocab.tokenizer) > len(dm.tokenizer)

    other_split = lm_dm(modules_dir, data_cache_dir, val_fraction=0.3)
    other_split.prepare_data()
    other_split.setup()
    assert other_split.packed.folder != dm.packed.folder
    assert other_split.packed.n_tokens == dm.packed.n_tokens
    assert entry_state(tokenizer_file) == before[0]  # same tokenizer, only re-split


def test_failed_prepare_leaves_no_cache_entry(modules_dir, tmp_path):
    """A prepare that fails half-way (here: a file turns out not to be text) leaves nothing to be mistaken
    for a complete cache entry, at either stage."""
    (mixed := tmp_path / "mixed").mkdir()
    for name in ("heapq.py", "bisect.py"):
        shutil.copy(modules_dir / name, mixed / name)
    (mixed / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="image.png is not UTF-8"):
        LMDataModule(TextFiles(str(mixed)), vocab_size=300, cache_dir=str(cache)).prepare_data()
    assert list(cache.glob("tokenizers/*")) == []

    (mixed / "image.png").unlink()
    corpus = TextFiles(str(mixed))
    tokenizer = cached_tokenizer(corpus, 300, cache)
    (mixed / "bisect.py").write_bytes(b"x = '\xff'\n")  # changes between training and encoding
    with pytest.raises(ValueError, match="bisect.py is not UTF-8"):
        pack_corpus(corpus, tokenizer, cache, val_fraction=0.2, split_seed=0)
    assert list(cache.glob("tokens/*")) == []


def test_setup_without_prepare_says_what_to_do(modules_dir, tmp_path):
    with pytest.raises(RuntimeError, match=r"prepare_data\(\)"):
        lm_dm(modules_dir, tmp_path).setup()


# ----- loaders


def test_train_order_is_seeded_per_epoch(dm, modules_dir, data_cache_dir):
    def first_tokens(loader):
        return torch.cat([batch[:, 0] for batch in loader])

    epoch0 = first_tokens(dm.train_dataloader())
    assert torch.equal(epoch0, first_tokens(dm.train_dataloader()))
    assert len(epoch0) == len(dm.train_blocks) // BATCH * BATCH  # drop_last
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(first_tokens(loader), epoch0)
    other_seed = lm_dm(modules_dir, data_cache_dir, seed=7)
    other_seed.setup()
    assert not torch.equal(first_tokens(other_seed.train_dataloader()), epoch0)


class RecordBatches(L.LightningModule):
    """The smallest trainable module that remembers which blocks it was fed."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch[:, 0].tolist())
        return (self.weight * batch.float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("saved_at", ["train_batch_end", "validation_end"])
def test_resumed_fit_sees_the_same_batches(saved_at, dm, modules_dir, data_cache_dir, tmp_path):
    """k steps, checkpoint, resume to N steps == N steps straight, also across an epoch boundary."""
    batch_size = 16
    steps_per_epoch = len(dm.train_blocks) // batch_size
    total = steps_per_epoch + 3
    # a checkpoint after every training batch, or after every validation (every 2 batches, across epochs)
    save_every = {"every_n_train_steps": 1} if saved_at == "train_batch_end" else {}

    def fit(max_steps, ckpt_path=None, callbacks=()):
        module = RecordBatches()
        trainer = L.Trainer(max_steps=max_steps, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, val_check_interval=2, check_val_every_n_epoch=None,
                            limit_val_batches=1, num_sanity_val_steps=0, callbacks=list(callbacks),
                            default_root_dir=tmp_path, enable_checkpointing=bool(callbacks))
        datamodule = lm_dm(modules_dir, data_cache_dir, batch_size=batch_size)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return module.seen

    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", save_top_k=-1,
                                               **save_every)
    straight = fit(total, callbacks=[saver])
    assert len(straight) == total
    stops = [k for k in [2, steps_per_epoch - 1, steps_per_epoch, steps_per_epoch + 1]
             if (tmp_path / f"step={k}.ckpt").exists()]
    assert len(stops) >= (4 if saved_at == "train_batch_end" else 2)
    for k in stops:
        resumed = fit(total, ckpt_path=tmp_path / f"step={k}.ckpt")
        assert resumed == straight[k:], f"resumed after step {k}"


class RecordBatchesPerRank(RecordBatches):
    def on_train_end(self):
        out = Path(self.trainer.default_root_dir) / f"rank{self.global_rank}.json"
        out.write_text(json.dumps(self.seen))


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_spawn_ranks_read_disjoint_shards_of_the_seeded_order(dm, modules_dir, data_cache_dir, tmp_path):
    """Two spawned ranks load the cache in setup and each reads its half of torch.randperm(seed)."""
    steps = 3
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(RecordBatchesPerRank(), datamodule=lm_dm(modules_dir, data_cache_dir))
    n = len(dm.train_blocks)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(dm.seed))[: n // 2 * 2]
    for rank in (0, 1):
        expected = [[int(dm.train_blocks[int(i)][0]) for i in row]
                    for row in order[rank::2][: steps * BATCH].view(steps, BATCH)]
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected


def test_datamodule_pickles_without_open_memory_maps(dm):
    dm.train_blocks[0]  # opens the memory map
    copy = pickle.loads(pickle.dumps(dm))
    assert copy.train_blocks._tokens is None
    assert torch.equal(copy.train_blocks[3], dm.train_blocks[3])
    assert copy.tokenizer.encode("def f():") == dm.tokenizer.encode("def f():")


def test_val_prompts_are_fixed_starts_of_validation_blocks(dm, modules_dir, data_cache_dir):
    prompts = dm.val_prompts(3, 8)
    assert len(prompts) == 3 and all(len(p) == 8 for p in prompts)
    assert prompts[0] == dm.val_blocks[0][:8].tolist()
    assert prompts[-1] == dm.val_blocks[len(dm.val_blocks) - 1][:8].tolist()
    fresh = lm_dm(modules_dir, data_cache_dir)
    assert fresh.val_prompts(3, 8) == prompts
    with pytest.raises(ValueError, match="block_size"):
        dm.val_prompts(1, BLOCK + 1)


# ----- bad input


@pytest.mark.parametrize(
    "field, value",
    [("block_size", 0), ("batch_size", 0), ("val_fraction", 0.0), ("val_fraction", 1.0),
     ("val_fraction", -0.1), ("vocab_size", 257), ("num_workers", -1)],
)
def test_bad_settings_name_their_field(field, value, modules_dir, tmp_path):
    with pytest.raises(ValueError, match=rf"^{field}={value}: must be "):
        lm_dm(modules_dir, tmp_path, **{field: value})


def test_corpus_must_be_a_corpus(tmp_path):
    with pytest.raises(ValueError, match=r"^corpus='some/path': must be a Corpus$"):
        LMDataModule("some/path", cache_dir=str(tmp_path))


def test_corpus_too_small_for_one_validation_batch(dm, modules_dir, data_cache_dir):
    batch_size = dm.packed.n_val_tokens // BLOCK + 1  # one block too many for the validation split
    too_big = lm_dm(modules_dir, data_cache_dir, batch_size=batch_size)
    too_big.prepare_data()
    needed = batch_size * BLOCK + 1
    with pytest.raises(ValueError, match=rf"^the validation split has {dm.packed.n_val_tokens} tokens.*batch_size="
                                         rf"{batch_size} x block_size={BLOCK} \+ 1 = {needed}.*smaller batch_size"):
        too_big.setup()


@pytest.mark.slow
def test_full_stdlib_corpus(tmp_path):
    dm = LMDataModule(StdlibCode(), cache_dir=str(tmp_path))
    assert 600 < len(dm.corpus.files) < 1500
    dm.prepare_data()
    dm.setup()
    assert dm.packed.n_tokens > 1_000_000
    assert dm.packed.n_documents > 600
    assert 0.03 < dm.packed.n_val_tokens / dm.packed.n_tokens < 0.07
    text = (STDLIB / "argparse.py").read_text()
    assert dm.tokenizer.decode(dm.tokenizer.encode(text)) == text
