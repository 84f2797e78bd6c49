"""MinHash throughput on 200-word documents: lmlab's numpy signatures against datasketch and rensa.

    python benchmarks/data_audit.py [--documents 20000] [--repeats 3] [--num-perm 128]
    python benchmarks/data_audit.py --smoke      # seconds: 300 documents, one repeat

Every variant starts from the raw texts and produces one 128-slot signature of the set of 5-word shingles
per document, as it is normally used: lmlab hashes the words and shingles of all documents with numpy
(lmlab.data.ngrams) and computes all signatures at once (lmlab.data.minhash); datasketch makes one
``MinHash`` per document from its shingles (``update_batch``, its fast path); rensa (Rust) gets the same
numpy shingle hashes as lmlab (``digest_matrix_from_flat_token_hashes``, its fastest prehashed path)
and is timed with them. Variants run interleaved, repeats round-robin, the median counts.

Correctness on the same documents: half of them are near copies of the other half (3 words of 200
replaced, shingle Jaccard ~0.86); each variant's mean absolute error of the Jaccard estimate over those
pairs against the exact Jaccard, and lmlab's LSH recall of the pairs at threshold 0.8.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time

import numpy as np

from lmlab.data.minhash import minhash_signatures, similar_pairs
from lmlab.data.ngrams import shingles, split_words

SHINGLE = 5


def documents(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 200 words: pairs (2i, 2i+1) are near copies with 3 words replaced."""
    rng = np.random.default_rng(seed)
    vocabulary = [f"w{i}" for i in range(20_000)]
    texts = []
    for i in range(n // 2):
        words = [vocabulary[j] for j in rng.integers(0, len(vocabulary), 200)]
        copy = list(words)
        for position in (30, 90, 150):
            copy[position] = f"changed{i}x{position}"
        texts += [" ".join(words), " ".join(copy)]
    return texts


def shingle_strings(text: str) -> list[bytes]:
    words = text.split()
    return [" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)]


def lmlab_signatures(texts: list[str], num_perm: int) -> np.ndarray:
    hashes, document = shingles(split_words(texts), SHINGLE)
    return minhash_signatures(hashes, document, len(texts), num_perm)


def datasketch_signatures(texts: list[str], num_perm: int) -> np.ndarray:
    from datasketch import MinHash

    signatures = []
    for text in texts:
        sketch = MinHash(num_perm=num_perm)
        sketch.update_batch(shingle_strings(text))
        signatures.append(sketch.hashvalues)
    return np.array(signatures)


def rensa_signatures(texts: list[str], num_perm: int) -> np.ndarray:
    from rensa import RMinHash

    hashes, document = shingles(split_words(texts), SHINGLE)
    offsets = np.searchsorted(document, np.arange(len(texts) + 1)).astype(np.uint64)
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, 0)
    return np.array(matrix.to_rows(), dtype=np.int64)


VARIANTS = {"lmlab_numpy": lmlab_signatures, "datasketch": datasketch_signatures, "rensa": rensa_signatures}
MODULES = {"datasketch": "datasketch", "rensa": "rensa"}


def estimate_error(signatures: np.ndarray, exact: np.ndarray) -> float:
    estimates = (signatures[0::2] == signatures[1::2]).mean(axis=1)
    return float(np.abs(estimates - exact).mean())


def exact_jaccard(texts: list[str]) -> np.ndarray:
    sets = [set(shingle_strings(t)) for t in texts]
    return np.array([len(a & b) / len(a | b) for a, b in zip(sets[0::2], sets[1::2], strict=True)])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="300 documents, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.documents, args.repeats = 300, 1
    texts = documents(args.documents)
    exact = exact_jaccard(texts)
    variants = {name: fn for name, fn in VARIANTS.items()
                if name not in MODULES or importlib.util.find_spec(MODULES[name]) is not None}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    errors = {}
    for _ in range(args.repeats):
        for name, signatures_of in variants.items():
            start = time.perf_counter()
            signatures = signatures_of(texts, args.num_perm)
            seconds[name].append(time.perf_counter() - start)
            errors[name] = estimate_error(signatures, exact)
    hashes, document = shingles(split_words(texts), SHINGLE)
    found = set(similar_pairs(hashes, document, len(texts), 0.8, args.num_perm))
    docs_per_s = {name: round(len(texts) / statistics.median(s)) for name, s in seconds.items()}
    report = {
        "documents": len(texts),
        "words_per_document": 200,
        "num_perm": args.num_perm,
        "repeats": args.repeats,
        "not_installed": sorted(set(VARIANTS) - set(variants)),
        "signatures_per_s": docs_per_s,
        "speedup_over_datasketch": {name: round(v / docs_per_s["datasketch"], 1) for name, v in docs_per_s.items()}
        if "datasketch" in docs_per_s else {},
        "mean_abs_jaccard_error": {name: round(e, 4) for name, e in errors.items()},
        "exact_jaccard_of_pairs": round(float(exact.mean()), 4),
        "lmlab_lsh_recall_at_0.8": sum((i, i + 1) in found for i in range(0, len(texts), 2)) / (len(texts) // 2),
    }
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
