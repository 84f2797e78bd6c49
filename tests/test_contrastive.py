"""loss=contrastive: docstring/code pairs from real code, InfoNCE on mean-pooled states, retrieval metrics."""

from __future__ import annotations

import functools
import json
import shutil
import sysconfig
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import make_dm, read_metrics
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torchmetrics.functional.retrieval import retrieval_recall, retrieval_reciprocal_rank

from lmlab.cli import CONF_DIR
from lmlab.cli.train import train
from lmlab.data import CodePairsDataModule, TextFiles
from lmlab.data.pairs import CodePair, EncodedPairs, corpus_pairs, extract_pairs
from lmlab.losses import InfoNCELoss, info_nce, mean_reciprocal_rank, recall_at_k
from lmlab.models import GPT
from lmlab.module import LitLM
from lmlab.tasks import PairEmbedding

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# ~1,300 documented functions in ~110 files: enough pairs that training generalises to held-out files
LEARNING_PACKAGES = ("json", "email", "http", "logging", "asyncio", "urllib", "importlib", "multiprocessing",
                     "unittest")
VOCAB, BLOCK, BATCH = 384, 32, 8

SOURCE = '''\
import functools


def add(a, b):
    """Add two numbers.

    Longer explanation that is not part of the query.
    """
    return a + b


def undocumented(x):
    return x


def only_docstring():
    """Nothing but a docstring here."""


def terse():
    """Short."""
    return 1


def same_line():  # a comment on the def line
    """The docstring shares its line with code."""; return 2

\x0c

class Greeter:
    @functools.cache
    def greet(self, name: str) -> str:
        """Return a greeting for the given name."""
        # a comment stays
        return f"hello {name}"

    async def wait(self):
        """Wait for the greeting to arrive."""
        await self.done
'''


def test_extract_pairs_cuts_the_docstring_out_and_skips_the_rest():
    assert extract_pairs(SOURCE, min_docstring_chars=10) == [
        CodePair("Add two numbers.", "def add(a, b):\n    return a + b\n"),
        CodePair(
            "Return a greeting for the given name.",
            'def greet(self, name: str) -> str:\n    # a comment stays\n    return f"hello {name}"\n',
        ),
        CodePair("Wait for the greeting to arrive.", "async def wait(self):\n    await self.done\n"),
    ]
    # the threshold applies to the query (the docstring's first paragraph)
    assert [p.query for p in extract_pairs(SOURCE, min_docstring_chars=17)] == [
        "Return a greeting for the given name.", "Wait for the greeting to arrive."]


def test_corpus_pairs_drop_repeats_and_count_what_is_not_python():
    repeat = textwrap.dedent('''
        def add(a, b):
            """Add two numbers."""
            return b + a
    ''')
    documents = [("a.py", SOURCE), ("notes.md", "# Notes\n\nNot *Python* at all: def ("), ("b.py", repeat),
                 ("c.py", "x = 1\n")]
    by_document, not_python = corpus_pairs(documents, min_docstring_chars=10)
    assert not_python == 1
    assert list(by_document) == ["a.py"]  # b.py's only pair repeats a query; c.py has none
    assert len(by_document["a.py"]) == 3


@pytest.fixture(scope="module")
def pairs_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pairs_cache")


def pairs_dm(corpus_dir: Path, cache_dir: Path, **settings) -> CodePairsDataModule:
    """Prepared and set up for fitting."""
    sizes = dict(vocab_size=VOCAB, block_size=BLOCK, batch_size=BATCH)
    dm = make_dm(CodePairsDataModule, corpus_dir, cache_dir, **{**sizes, **settings})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def same_texts(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_split_is_by_file_seeded_and_deterministic(corpus_dir, pairs_cache, tmp_path):
    dm = pairs_dm(corpus_dir, pairs_cache)
    encoded = EncodedPairs.load(dm._pairs_folder())
    tokenizer = dm.tokenizer
    decode = [tokenizer.decode(q.tolist()) for q in encoded.queries]
    val_files = set(encoded.val_documents)
    files = TextFiles(str(corpus_dir)).files
    from_val = {p.query for f in files if str(f) in val_files for p in extract_pairs(f.read_text(), 16)}
    from_train = {p.query for f in files if str(f) not in val_files for p in extract_pairs(f.read_text(), 16)}
    split = encoded.val_start
    assert split == len(dm.train_pairs) and len(encoded.queries) - split == len(dm.val_pairs)
    assert set(decode[split:]) <= from_val and set(decode[:split]) <= from_train
    assert 0.1 < len(dm.val_pairs) / len(encoded.queries) < 0.3  # about data.val_fraction=0.2
    # another cache, same settings: the same pairs; another split seed: other held-out files
    again = EncodedPairs.load(pairs_dm(corpus_dir, tmp_path)._pairs_folder())
    assert again.val_documents == encoded.val_documents
    assert same_texts(again.queries, encoded.queries) and same_texts(again.documents, encoded.documents)
    assert not same_texts(pairs_dm(corpus_dir, tmp_path, split_seed=1).val_pairs.first, dm.val_pairs.first)
    assert set(json.loads((dm._pairs_folder() / "meta.json").read_text())["val_documents"]) == val_files


def test_batches_are_right_padded_truncated_pairs(corpus_dir, pairs_cache):
    dm = pairs_dm(corpus_dir, pairs_cache, block_size=12)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == {"query_ids", "query_mask", "doc_ids", "doc_mask", "index"}
    assert torch.equal(batch["index"], torch.arange(BATCH))
    pad = dm.tokenizer.pad_token_id
    for side in ("query", "doc"):
        ids, mask = batch[f"{side}_ids"], batch[f"{side}_mask"]
        assert ids.dtype == mask.dtype == torch.long and ids.shape == mask.shape and ids.shape[1] <= 12
        lengths = mask.sum(1)
        assert torch.equal(mask, (torch.arange(ids.shape[1]) < lengths[:, None]).long())  # ones, then zeros
        assert (ids[mask == 0] == pad).all() and (ids[mask == 1] != pad).all()
    texts = dm.val_pairs.first
    for row in range(BATCH):
        full = dm.tokenizer.decode(texts[row].tolist())
        assert full.startswith(dm.tokenizer.decode(batch["query_ids"][row, : batch["query_mask"][row].sum()]))
    # the same cached tokenizer as a language-model run on this corpus and vocabulary
    assert dm.tokenizer.backend_tokenizer.to_str() == dm.load_tokenizer().backend_tokenizer.to_str()


def test_simcse_pairs_every_training_text_with_itself(corpus_dir, pairs_cache):
    code_search = pairs_dm(corpus_dir, pairs_cache)
    simcse = pairs_dm(corpus_dir, pairs_cache, pairs="simcse")
    assert len(simcse.train_pairs) == 2 * len(code_search.train_pairs)
    assert simcse.train_pairs.first is simcse.train_pairs.second
    val = simcse.val_pairs  # validation is code search in both
    assert same_texts(val.first, code_search.val_pairs.first)
    assert same_texts(val.second, code_search.val_pairs.second)


def test_too_few_pairs_name_the_fields(tmp_path, pairs_cache):
    (tmp_path / "one.py").write_text(SOURCE)
    one_file = r"^the validation split has 0 pairs.*batch_size=2.*3 docstring/code pairs in 1 documents"
    with pytest.raises(ValueError, match=one_file + r".*val_fraction.*at least two files"):
        pairs_dm(tmp_path, pairs_cache, min_docstring_chars=10, batch_size=2)
    other = {"numbers": "values", "a + b": "b + a", "greeting": "salute", "hello": "hi", "done": "ready"}
    text = SOURCE
    for old, new in other.items():
        text = text.replace(old, new)
    (tmp_path / "two.py").write_text(text)
    two_files = r"^the training split has 3 pairs.*batch_size=8.*6 docstring/code pairs in 2 documents"
    with pytest.raises(ValueError, match=two_files + r" \(0 not Python\).*min_docstring_chars=10"):
        pairs_dm(tmp_path, pairs_cache, min_docstring_chars=10)
    with pytest.raises(ValueError, match=r"^pairs='dense': must be one of 'code_search', 'simcse'$"):
        CodePairsDataModule(TextFiles(str(tmp_path)), pairs="dense")


# ----- losses and metrics


def direct_ranks(scores: torch.Tensor) -> list[int]:
    """Rank of document i for query i by sorting, ties placed before it."""
    ranks = []
    for i, row in enumerate(scores.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j == i))
        ranks.append(order.index(i) + 1)
    return ranks


def test_recall_and_mrr_against_direct_computation_and_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    # positive scores: torchmetrics counts a document scored <= 0 as not retrieved
    scores = torch.rand(40, 40, generator=gen, dtype=torch.float64) + 0.4 * torch.eye(40, dtype=torch.float64)
    ranks = torch.tensor(direct_ranks(scores), dtype=torch.float64)
    for k in (1, 3, 10):
        assert recall_at_k(scores, k).item() == pytest.approx((ranks <= k).double().mean().item(), abs=1e-7)
    assert mean_reciprocal_rank(scores).item() == pytest.approx((1 / ranks).mean().item(), abs=1e-7)
    # torchmetrics: one retrieval problem per query, its own document relevant
    relevant = torch.eye(40, dtype=torch.bool)
    problems = list(zip(scores, relevant, strict=True))
    reference_mrr = torch.stack([retrieval_reciprocal_rank(s, t) for s, t in problems])
    reference_r3 = torch.stack([retrieval_recall(s, t, top_k=3) for s, t in problems])
    assert mean_reciprocal_rank(scores).item() == pytest.approx(reference_mrr.mean().item(), abs=1e-6)
    assert recall_at_k(scores, 3).item() == pytest.approx(reference_r3.float().mean().item(), abs=1e-6)


def test_ties_count_against_the_target_and_explicit_targets():
    collapsed = torch.ones(5, 5)  # every embedding the same: retrieval is no better than last place
    assert recall_at_k(collapsed, 1).item() == 0.0
    assert mean_reciprocal_rank(collapsed).item() == pytest.approx(0.2)
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    targets = torch.tensor([1, 2])
    assert recall_at_k(scores, 1, targets).item() == 0.5
    assert mean_reciprocal_rank(scores, targets).item() == pytest.approx((1 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="k=0 must be >= 1"):
        recall_at_k(scores, 0, targets)


def test_info_nce_loss_module_is_info_nce():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 16, generator=gen), torch.randn(6, 16, generator=gen)
    torch.testing.assert_close(InfoNCELoss()(a, b), info_nce(a, b, temperature=0.05), rtol=0, atol=0)
    torch.testing.assert_close(InfoNCELoss(0.3)(a, b), info_nce(a, b, temperature=0.3), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^temperature=0: must be a number > 0$"):
        InfoNCELoss(temperature=0)


def test_mean_pooled_embedding_ignores_padding():
    torch.manual_seed(0)
    model = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16).eval()
    embed = functools.partial(PairEmbedding.embed, model.forward)
    lengths = [3, 7, 5]
    ids = torch.full((3, 7), 63)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(0, 63, (n,))
        mask[row, :n] = 1
    with torch.no_grad():
        batched = embed(ids, mask)
        alone = torch.cat([embed(ids[r : r + 1, :n], mask[r : r + 1, :n])
                           for r, n in enumerate(lengths)])
        direct = torch.stack([model(ids[r : r + 1, :n], output_hidden=True).hidden[0].mean(0)
                              for r, n in enumerate(lengths)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.ddp
def test_validation_under_ddp_scores_every_pair_once(corpus_dir, pairs_cache):
    dm = pairs_dm(corpus_dir, pairs_cache)
    assert len(dm.val_pairs) % 2  # two ranks: the distributed sampler repeats a pair to even them out
    torch.manual_seed(0)
    model = GPT(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)

    def validate(**trainer_args) -> dict[str, float]:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, **trainer_args)
        module = LitLM(model, InfoNCELoss(), torch.optim.SGD, task=PairEmbedding())
        (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
        return metrics

    single = validate(devices=1)
    sharded = validate(devices=2, strategy="ddp_spawn", use_distributed_sampler=True)
    assert sharded == pytest.approx(single, rel=1e-5)
    assert set(single) == {"val/loss", "val/recall@1", "val/mrr"}


# ----- configs and runs


def pairs_overrides(corpus_dir: Path) -> list[str]:
    """loss=contrastive on a folder of code (the tiny test overrides would otherwise pick data=text_files).

    No callbacks: these tests are about the pairs; test_configs.py runs the configs with the default ones.
    """
    return ["loss=contrastive", "data=code_pairs", "data.corpus._target_=lmlab.data.TextFiles",
            f"+data.corpus.paths={corpus_dir}", "callbacks=none"]


def test_loss_contrastive_selects_code_pairs_unless_data_is_given(make_cfg):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["loss=contrastive"])
    assert cfg.data._target_ == "lmlab.data.CodePairsDataModule"
    cfg = make_cfg("loss=contrastive")  # the tiny test overrides give data=text_files, which wins
    with pytest.raises(ValueError, match=r"data LMDataModule \(blocks\), loss InfoNCELoss \(pairs\): they must "
                                         "take the same batches; loss=contrastive trains on pair batches"):
        train(cfg)
    with pytest.raises(ValueError, match=r"data CodePairsDataModule \(pairs\), loss LanguageModelingLoss \(blocks\)"):
        train(make_cfg("loss=ce", "data=code_pairs"))


def test_simcse_needs_dropout(make_cfg, corpus_dir):
    with pytest.raises(ValueError, match=r"data\.pairs=simcse needs dropout.*model\.dropout"):
        train(make_cfg(*pairs_overrides(corpus_dir), "data.pairs=simcse", "debug=fast"))
    train(make_cfg(*pairs_overrides(corpus_dir), "data.pairs=simcse", "model.dropout=0.1", "debug=fast"))


@pytest.fixture(scope="module")
def learning_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("learning_corpus")
    for package in LEARNING_PACKAGES:
        for f in sorted((STDLIB / package).glob("*.py")):
            shutil.copy(f, folder / f"{package}_{f.name}")
    return folder


def test_contrastive_training_beats_the_untrained_model(make_cfg, learning_corpus, one_thread):
    cfg = make_cfg(*pairs_overrides(learning_corpus), "data.batch_size=32", "data.val_fraction=0.2",
                   "optimizer.lr=1e-3", "trainer.max_steps=100", "trainer.val_check_interval=100",
                   "trainer.limit_val_batches=1.0", "optimized_metric=val/recall@1")
    assert cfg.data._target_ == "lmlab.data.CodePairsDataModule"
    L.seed_everything(cfg.seed)  # as train() does before it builds the model: the same initial weights
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    datamodule.prepare_data()
    untrained = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False)
    (before,) = untrained.validate(LitLM(model, instantiate(cfg.loss), instantiate(cfg.optimizer),
                                         task=instantiate(cfg.task)),
                                   datamodule=datamodule, verbose=False)
    n_val = len(datamodule.val_pairs)
    assert n_val > 200

    recall = train(cfg)
    after = _last_validation(Path(cfg.paths.output_dir))
    assert recall == pytest.approx(after["val/recall@1"])
    # at least 10 more of the ~250 held-out queries find their function first, and ranks improve overall
    assert after["val/recall@1"] >= before["val/recall@1"] + 10 / n_val, (before, after)
    assert after["val/mrr"] > before["val/mrr"] + 0.02, (before, after)


def _last_validation(run_dir: Path) -> dict[str, float]:
    metrics = read_metrics(run_dir)
    step = max(metrics["val/recall@1"])
    return {key: values[step] for key, values in metrics.items() if key.startswith("val/") and step in values}
