"""The data audit on a planted corpus: random documents with planted exact copies, near copies at Jaccard ~0.86
and passages shared between documents, checked against the plant and against brute-force Python versions
of each rule; dedup and decontaminate checked on the packed split; the CLI's JSON and one-line errors."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli.main import main
from lmlab.data import LMDataModule, TextFiles
from lmlab.data.contamination import NGRAM_WORDS, WORD
from lmlab.data.minhash import minhash_signatures
from lmlab.data.ngrams import shingles, split_words
from lmlab.data.packing import PackedCorpus
from lmlab.data.quality import quality_failures
from lmlab.errors import ArgumentError

N_RANDOM, WORDS, VOCAB = 160, 200, 384


def shingle_set(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def exact_jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y)


def random_text(rng: np.random.Generator, vocabulary: list[str]) -> str:
    words = [vocabulary[i] for i in rng.integers(0, len(vocabulary), WORDS)]
    return "\n".join(" ".join(words[i : i + 10]) for i in range(0, WORDS, 10)) + "\n"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Files of a planted corpus and what was planted: exact copy pairs, near copy pairs, shared-passage pairs
    (each a pair of file paths), every planted relation between two documents in ``related``."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = sorted({"".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(3000)})
    texts = {f"doc{i:03d}.txt": random_text(rng, vocabulary) for i in range(N_RANDOM)}
    names = list(texts)
    exact, near, shared = [], [], []
    for i, name in enumerate(names[:12]):  # exact copies, whitespace changed (normalisation makes them equal)
        copy = f"copy{i:02d}.txt"
        texts[copy] = "  " + texts[name].replace("\n", " \r\n")
        exact.append((name, copy))
    for i, name in enumerate(names[12:32]):  # 3 words replaced 40 words apart: Jaccard (196-15)/(196+15) ~ 0.86
        words = texts[name].split()
        for position in (30, 90, 150):
            words[position] = f"changed{i}x{position}"
        texts[f"near{i:02d}.txt"] = " ".join(words)
        near.append((name, f"near{i:02d}.txt"))
    for a, b in zip(names[40:100:2], names[41:100:2], strict=True):  # a 20-word passage of a copied into b
        words_a, words_b = texts[a].split(), texts[b].split()
        words_b[100:120] = words_a[50:70]
        texts[b] = " ".join(words_b)
        shared.append((a, b))
    folder = tmp_path_factory.mktemp("planted")
    for name, text in texts.items():
        (folder / name).write_text(text)
    path = {name: str((folder / name).resolve()) for name in texts}
    pairs = {kind: [(path[a], path[b]) for a, b in found] for kind, found in
             (("exact", exact), ("near", near), ("shared", shared))}
    # the documents as lmlab reads them (universal newlines: the copies' \r\n is \n there)
    return dict(folder=folder, texts=dict(TextFiles(str(folder))), related=sum(pairs.values(), []), **pairs)


def datamodule(planted, cache_dir, **settings) -> LMDataModule:
    return LMDataModule(TextFiles(str(planted["folder"])), vocab_size=VOCAB, val_fraction=0.25,
                        cache_dir=str(cache_dir), **settings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audit_cache")


@pytest.fixture(scope="module")
def report(planted, cache) -> dict:
    return datamodule(planted, cache, dedup="none").audit()


def pairs_within(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for group in groups for p in combinations(group, 2)}


def test_planted_jaccard_is_near_threshold(planted):
    similarities = [exact_jaccard(planted["texts"][a], planted["texts"][b]) for a, b in planted["near"]]
    assert all(0.82 < s < 0.9 for s in similarities), similarities


def test_exact_duplicates_all_found(planted, report):
    assert pairs_within(report["exact_duplicates"]) == {tuple(sorted(p)) for p in planted["exact"]}


def test_near_duplicates_recall_and_precision(planted, report):
    found = pairs_within(report["near_duplicates"])
    truth = {tuple(sorted(p)) for p in planted["near"]}
    assert len(found & truth) / len(truth) >= 0.95
    assert found and len(found & truth) / len(found) >= 0.95


def test_minhash_agreement_estimates_jaccard(planted):
    """Slot agreement is an unbiased estimate of shingle Jaccard with the binomial spread of 128 slots or less."""
    texts = list(planted["texts"].values())
    words = split_words(texts)
    hashes, document = shingles(words, 5)
    signatures = minhash_signatures(hashes, document, len(texts), 128)
    rng = np.random.default_rng(1)
    pairs = [(i, i + 1) for i in range(0, len(texts) - 1)] + [tuple(rng.choice(len(texts), 2, replace=False))
                                                              for _ in range(200)]
    estimates = np.array([(signatures[i] == signatures[j]).mean() for i, j in pairs])
    exact = np.array([exact_jaccard(texts[i], texts[j]) for i, j in pairs])
    near = [(planted["texts"][a], planted["texts"][b]) for a, b in planted["near"]]
    near_estimates = [(signatures[texts.index(a)] == signatures[texts.index(b)]).mean() for a, b in near]
    near_exact = [exact_jaccard(a, b) for a, b in near]
    z = (np.array(near_estimates) - near_exact) / np.sqrt(np.array(near_exact) * (1 - np.array(near_exact)) / 128)
    assert abs(z.mean()) < 3 / np.sqrt(len(z)) * 1.5 and z.std() < 1.5
    assert np.abs(estimates - exact).max() < 0.15  # unrelated pairs: Jaccard ~0, estimates ~0


def brute_force_overlap(texts: dict[str, str], train: list[str], val: list[str]) -> dict[str, list[bool]]:
    """Per overlapping validation document, which of its words lie inside a 13-gram that a training document has."""
    grams = {tuple(w[i : i + NGRAM_WORDS]) for t in train for w in [texts[t].split()]
             for i in range(len(w) - NGRAM_WORDS + 1)}
    result = {}
    for doc in val:
        words = texts[doc].split()
        covered = [False] * len(words)
        for i in range(len(words) - NGRAM_WORDS + 1):
            if tuple(words[i : i + NGRAM_WORDS]) in grams:
                covered[i : i + NGRAM_WORDS] = [True] * NGRAM_WORDS
        if any(covered):
            result[doc] = covered
    return result


def test_contamination_is_exactly_the_planted_relations(planted, report):
    train, val = set(report["split"]["train"]), set(report["split"]["val"])
    related = {(a, b) for a, b in planted["related"]} | {(b, a) for a, b in planted["related"]}
    expected = {v for v, t in related if v in val and t in train}
    assert len(expected) >= 5  # the plant crosses the split often enough to mean something
    assert set(report["val_overlap"]) == expected
    assert set(brute_force_overlap(planted["texts"], report["split"]["train"], report["split"]["val"])) == expected


def test_overlap_token_fraction_matches_brute_force(planted, report, cache):
    tokenizer = datamodule(planted, cache, dedup="none").tokenizer
    covered_tokens = 0
    for doc, covered in brute_force_overlap(planted["texts"], report["split"]["train"],
                                            report["split"]["val"]).items():
        text = planted["texts"][doc]
        spans = [m.span() for m in WORD.finditer(text)]
        ranges = [(spans[i][0], spans[j][1]) for i, j in _runs(covered)]
        offsets = tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).offsets
        covered_tokens += sum(any(s < end and e > start for start, end in ranges) for s, e in offsets)
    assert covered_tokens > 0
    assert report["val_overlap_token_fraction"] == pytest.approx(covered_tokens / sum(report["split_tokens"]["val"]))


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def test_split_is_the_packed_split(planted, report, cache):
    """The audit's split (ids and token counts) is the packed file's: its validation tokens are the validation
    documents encoded in the audit's order, each followed by EOS."""
    dm = datamodule(planted, cache, dedup="none")
    dm.setup()
    packed: PackedCorpus = dm.packed
    assert packed.n_val_tokens == sum(report["split_tokens"]["val"])
    assert packed.n_documents == len(report["split"]["train"]) + len(report["split"]["val"])
    encode = dm.tokenizer.backend_tokenizer.encode
    expected = [i for doc in report["split"]["val"] for i in
                [*encode(planted["texts"][doc], add_special_tokens=False).ids, packed.eos_id]]
    assert packed.tokens()[packed.val_start :].tolist() == expected


def test_dedup_removes_copies_and_keeps_the_other_documents_sides(planted, report, cache):
    for dedup, groups in (("exact", report["exact_duplicates"]),
                          ("near", report["exact_duplicates"] + report["near_duplicates"])):
        deduplicated = datamodule(planted, cache, dedup=dedup).audit()
        dropped = {doc for group in groups for doc in sorted(group)[1:]}
        assert set(deduplicated["dropped"]) == dropped
        order = deduplicated["split"]["train"] + deduplicated["split"]["val"]
        full_order = report["split"]["train"] + report["split"]["val"]
        assert order == [doc for doc in full_order if doc not in dropped]
        dm = datamodule(planted, cache, dedup=dedup)
        dm.setup()
        assert dm.packed.n_documents == len(full_order) - len(dropped)
        assert dm.packed.n_val_tokens == sum(deduplicated["split_tokens"]["val"])


def test_decontaminate_moves_overlapping_validation_documents_to_training(planted, report, cache):
    clean = datamodule(planted, cache, dedup="none", decontaminate=True).audit()
    assert clean["val_overlap"] == [] and clean["val_overlap_token_fraction"] == 0.0
    assert set(clean["decontaminated"]) == set(report["val_overlap"])  # the plant has no chains
    assert clean["split"]["val"] == [d for d in report["split"]["val"] if d not in clean["decontaminated"]]
    assert clean["split"]["train"] == report["split"]["train"] + clean["decontaminated"]
    dm = datamodule(planted, cache, dedup="none", decontaminate=True)
    dm.setup()
    assert dm.packed.n_val_tokens == sum(clean["split_tokens"]["val"])


def test_audit_is_cached(planted, cache, report):
    dm = datamodule(planted, cache, dedup="none")
    audit_file = dm._packed_folder() / "audit.json"
    written = audit_file.stat().st_mtime_ns
    assert dm.audit() == report
    assert audit_file.stat().st_mtime_ns == written


def test_quality_rules_against_hand_made_documents():
    """Each hand-made document fails the rules it was made to fail (and the ones its construction implies)."""
    body = " ".join(f"word{i} text" for i in range(40))  # 80 words, mean length ~4.9, no repeated 5-gram
    documents = {
        "ok": (body, set()),
        "too_short": ("just a few words here", {"too_short"}),
        "one_letter": (" ".join(["a"] * 80), {"mean_word_length", "top_ngram", "duplicate_ngram"}),
        "hashes": (body + " #" * 10, {"symbol_to_word"}),
        "repeated_lines": ("\n".join([body] + ["x = compute(a, b)"] * 3 + ["", "  "]), {"duplicate_lines"}),
        "repeated_passage": (body + " " + " ".join(body.split()[:30]), {"duplicate_ngram"}),
        "repeated_pair": (" ".join(["alpha beta"] * 40) + " " + body, {"top_ngram", "duplicate_ngram"}),
        "long_words": (" ".join(f"{'x' * 12}{i}" for i in range(60)), {"mean_word_length"}),
    }
    texts = [text for text, _ in documents.values()]
    failures = quality_failures(texts, split_words(texts))
    for index, (name, (_, expected)) in enumerate(documents.items()):
        assert {rule for rule, fails in failures.items() if fails[index]} == expected, name


def test_regex_words_are_str_split_words():
    text = "a\x1cb\u00a0c\u2028d\te  f\x85g"
    assert [m.group() for m in WORD.finditer(text)] == text.split()


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    """``lmlab data audit <args>`` in this process: (exit status, stdout, stderr)."""
    try:
        main(["data", "audit", *args])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_the_audit_as_json(planted, cache, tmp_path, capsys):
    out = tmp_path / "audit.json"
    status, stdout, stderr = run_cli("data=text_files", f"data.corpus.paths={planted['folder']}",
                                     f"data.vocab_size={VOCAB}", "data.val_fraction=0.25", f"paths.cache_dir={cache}",
                                     "--json", str(out), capsys=capsys)
    assert status == 0, stderr
    written = json.loads(out.read_text())
    assert written == datamodule(planted, cache).audit()
    for key in ("documents", "exact_duplicates", "near_duplicates", "split", "val_overlap",
                "val_overlap_token_fraction", "quality"):
        assert key in written
    assert set(written["split"]) == {"train", "val"}
    assert "data audit:" in stdout


@pytest.mark.parametrize("kind", ["binary", "empty"])
def test_cli_bad_corpus_is_one_line(tmp_path, kind, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"\x00\x01binary" if kind == "binary" else b"")
    status, _, stderr = run_cli("data=text_files", f"data.corpus.paths={corpus}",
                                f"paths.cache_dir={tmp_path / 'cache'}", capsys=capsys)
    assert status == 2
    lines = stderr.strip().splitlines()
    named = corpus / "a.txt" if kind == "binary" else corpus
    assert len(lines) == 1 and str(named) in lines[0] and ("binary" if kind == "binary" else "empty") in lines[0]


def test_dedup_is_checked_by_its_annotation(planted):
    with pytest.raises(ArgumentError, match="dedup='fuzzy': must be one of 'none', 'exact', 'near'"):
        LMDataModule(TextFiles(str(planted["folder"])), dedup="fuzzy")


def test_decontaminate_refuses_to_empty_validation(tmp_path):
    """Every file starts with the same licence header: all validation documents overlap training."""
    rng = np.random.default_rng(3)
    header = "# Copyright (C) 2001 Example Software Foundation. Licensed under the same terms as the rest.\n"
    for i in range(8):
        (tmp_path / f"f{i}.py").write_text(header + " ".join(f"w{j}" for j in rng.integers(0, 500, 300)))
    dm = LMDataModule(TextFiles(str(tmp_path)), vocab_size=300, val_fraction=0.25, decontaminate=True,
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ArgumentError, match=r"decontaminate=true: every one of the 2 validation documents .* "
                                            r"larger val_fraction=0.25 or decontaminate=false"):
        dm.prepare_data()


def test_a_training_run_records_the_audit_of_the_split_it_trained_on(trained_run, caplog):
    """The run directory keeps the audit (data_audit.json), the same the data module stores with its packed tokens;
    `lmlab report` shows its summary line."""
    import html

    from lmlab.data.audit import summary_line
    from lmlab.report import write_report

    audit = json.loads((trained_run / "data_audit.json").read_text())
    assert audit["settings"]["dedup"] == "near" and audit["documents"] >= len(audit["split"]["train"]) > 0
    page = Path(write_report(trained_run, out=trained_run.parent / "report.html")).read_text()
    assert f'id="data-audit">{html.escape(summary_line(audit))}</p>' in page


def test_per_document_loss_splits_a_runs_validation_loss_by_the_audit(trained_run, capsys):
    """experiments/data_quality/per_document_loss.py: the overlapping and clean documents' losses average to the
    whole validation loss (weighted by their tokens), as do the covered and uncovered tokens'."""
    import importlib.util

    path = Path(__file__).parents[1] / "experiments" / "data_quality" / "per_document_loss.py"
    spec = importlib.util.spec_from_file_location("per_document_loss", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    [run] = script.main([str(trained_run)])["runs"]
    audit = json.loads((trained_run / "data_audit.json").read_text())
    assert run["val_documents"] == len(audit["split"]["val"]) and run["overlap_documents"] == len(audit["val_overlap"])
    assert run["val_tokens"] == sum(audit["split_tokens"]["val"]) - 1  # every token but the first is predicted
    n_overlap, n = run["tokens_overlap_documents"], run["val_tokens"]
    parts = [(run["loss_overlap_documents"] or 0.0, n_overlap), (run["loss_clean_documents"] or 0.0, n - n_overlap)]
    assert sum(loss * count for loss, count in parts) / n == pytest.approx(run["loss"], rel=1e-9)
    assert 0 < run["loss"] < 2 * math.log(384)
    covered = audit["val_overlap_token_fraction"] * sum(audit["split_tokens"]["val"])  # the audit's own count
    assert abs(run["covered_tokens"] - covered) <= 1  # (the first validation token is not scored)
    assert "clean validation documents common to every run" in capsys.readouterr().out
