"""nanoGPT's baby character-level recipe both ways, start-up included: a plain PyTorch script, `python train.py`.

    python benchmarks/recipe.py [--repeats 1] [--variants plain default callbacks_none bare] [--smoke]

The recipe is nanoGPT's CPU run of config/train_shakespeare_char.py (its README: 4 layers x 4 heads x 128,
block 64, batch 12, 2000 iterations, lr_decay_iters = max_iters) with the config file's own dropout 0.2 and
200 evaluation batches every 250 iterations; AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on matrices,
100 warmup iterations, cosine decay to 1e-4, gradient clipping at 1.0, no bias, the loss read every 10
iterations. Tiny Shakespeare is not available offline: the text is the first 1,115,394 bytes (Tiny
Shakespeare's size) of the Python standard library's ASCII-only sources, tokenized per byte on both sides
(lmlab's byte-level BPE at its smallest vocabulary, 258, has no merges: ASCII bytes are characters), the last
tenth held out. Variants, each a fresh process:

  plain           benchmarks/recipe_plain.py: nanoGPT's model and loop transcribed (see its docstring)
  default         `python train.py` with the recipe's settings and everything else default (W&B offline,
                  the default callbacks, the samples printed at the end)
  callbacks_none  the same with `callbacks=none`
  bare            the same with `callbacks=none logger=none`

Each run's wall time from launch to exit, its CPU time, the seconds to the end of the first optimizer step,
the training loss (mean of the last 10 readings, one per 10 steps) and the final validation loss (the same
windows on both sides), and for lmlab each callback's seconds (lmlab.callbacks.timing, put in by a probe
callback added by config). One untimed warm-up run of each variant first (10 steps: the OS file cache, the
token cache); then the variants take turns, ``--repeats`` rounds, and ``speed_vs_plain`` (plain's wall time /
the variant's) is taken within each round. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from common import BENCHMARKS, device_info, median, read_json, run_quietly, train_py, write_json

from lmlab.callbacks.timing import CallbackClock

SHAKESPEARE_BYTES = 1_115_394
VARIANTS = {"plain": None, "default": [], "callbacks_none": ["callbacks=none"],
            "bare": ["callbacks=none", "logger=none"]}
RECIPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000, eval_interval=250,
              eval_iters=200, log_interval=10, warmup_iters=100, lr_decay_iters=2000, lr=1e-3, min_lr=1e-4,
              beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, dropout=0.2, val_fraction=0.1)
SMOKE = dict(max_iters=10, eval_interval=5, eval_iters=2, warmup_iters=2, lr_decay_iters=10)
LAST_READINGS = 10


class RecipeProbe(L.Callback):
    """Put into the lmlab run by config: the wall clock at the end of the first optimizer step and of training,
    the training loss every ``log_every_n_steps`` steps, the validation loss at each validation and each
    callback's seconds; written as ``recipe_probe.json`` in the run directory when training ends."""

    def setup(self, trainer, pl_module, stage):
        self.clock = CallbackClock.install(trainer)
        self.result = {"train_loss": {}, "val_loss": {}}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        self.result.setdefault("first_step_done", time.time())
        if step % trainer.log_every_n_steps == 0:  # the same rhythm of reads as the plain loop's
            self.result["train_loss"][step] = float(outputs["loss"])

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.result["val_loss"][trainer.global_step] = float(trainer.callback_metrics["val/loss"])

    def on_train_end(self, trainer, pl_module):
        seconds = {name: t for name, t in self.clock.seconds.items() if name != type(self).__name__}
        write_json(trainer, "recipe_probe", {**self.result, "train_end": time.time(), "callback_seconds": seconds})


def recipe_corpus(size: int, folder: Path) -> Path:
    """The first ``size`` bytes of the standard library's ASCII-only .py sources (sorted), written once:
    the same file (and modification time) keeps lmlab's token cache warm from run to run."""
    from lmlab.data import StdlibCode

    path = folder / f"recipe_stdlib_{size}.txt"
    if path.is_file() and path.stat().st_size == size:
        return path
    parts, total = [], 0
    for file in StdlibCode().files:
        text = file.read_bytes()
        if text.isascii():
            parts.append(text)
            total += len(text)
        if total >= size:
            break
    folder.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts)[:size])
    return path


def lmlab_overrides(recipe: dict, corpus: Path, cache_dir: Path) -> list[str]:
    """The recipe as train.py overrides (nanoGPT's names -> lmlab's keys)."""
    r = recipe
    return ["trainer=cpu", "data=text_files", f"data.corpus.paths={corpus}", "data.vocab_size=258",
            f"data.block_size={r['block_size']}", f"data.batch_size={r['batch_size']}",
            f"data.val_fraction={r['val_fraction']}", f"paths.cache_dir={cache_dir}",
            f"model.n_layer={r['n_layer']}", f"model.n_head={r['n_head']}", f"model.n_embd={r['n_embd']}",
            f"model.block_size={r['block_size']}", f"model.dropout={r['dropout']}", "model.bias=false",
            f"optimizer.lr={r['lr']}", f"optimizer.betas=[{r['beta1']},{r['beta2']}]",
            f"optimizer.weight_decay={r['weight_decay']}", "sched=cosine", f"sched.warmup_steps={r['warmup_iters']}",
            f"sched.total_steps={r['lr_decay_iters']}", f"sched.min_lr_ratio={round(r['min_lr'] / r['lr'], 6)}",
            f"trainer.max_steps={r['max_iters']}", f"trainer.val_check_interval={r['eval_interval']}",
            f"trainer.limit_val_batches={r['eval_iters']}", f"trainer.gradient_clip_val={r['grad_clip']}",
            f"trainer.log_every_n_steps={r['log_interval']}", "seed=1337"]


def run_plain(recipe: dict, corpus: Path, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in recipe.items()]
    cmd = [sys.executable, str(BENCHMARKS / "recipe_plain.py"), f"--corpus={corpus}", f"--out={run_dir / 'out.json'}",
           *flags]
    before, started = os.times(), time.time()
    launched = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds, after = time.perf_counter() - launched, os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads((run_dir / "out.json").read_text())
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return figures(out, dict(seconds=seconds, cpu_seconds=cpu, started=started))


def run_lmlab(variant: str, recipe: dict, corpus: Path, cache_dir: Path, run_dir: Path) -> dict:
    overrides = [*lmlab_overrides(recipe, corpus, cache_dir), *VARIANTS[variant]]
    run = train_py(overrides, run_dir, callbacks={"recipe_probe": {"_target_": "recipe.RecipeProbe"}})
    out = read_json(run_dir, "recipe_probe")
    result = figures(out, run)
    result["callback_seconds"] = {k: round(v, 3) for k, v in sorted(out["callback_seconds"].items(),
                                                                    key=lambda kv: -kv[1])}
    result["callback_share"] = {k: round(v / run["seconds"], 4) for k, v in result["callback_seconds"].items()}
    result["callbacks_share"] = round(sum(out["callback_seconds"].values()) / run["seconds"], 4)
    return result


def figures(out: dict, run: dict) -> dict:
    """What both sides report, from the run's own clock readings and losses."""
    train = [out["train_loss"][k] for k in sorted(out["train_loss"], key=int)]
    val = [out["val_loss"][k] for k in sorted(out["val_loss"], key=int)]
    return dict(wall_s=round(run["seconds"], 2), cpu_s=round(run["cpu_seconds"], 2),
                first_step_s=round(out["first_step_done"] - run["started"], 3),
                train_s=round(out["train_end"] - out["first_step_done"], 2),
                after_train_s=round(run["started"] + run["seconds"] - out["train_end"], 2),
                train_loss=round(sum(train[-LAST_READINGS:]) / len(train[-LAST_READINGS:]), 4),
                val_loss=round(val[-1], 4) if val else None)


def parse_settings(pairs: list[str]) -> dict:
    settings = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in RECIPE:
            raise SystemExit(f"--set {pair}: unknown key; keys: {', '.join(RECIPE)}")
        settings[key] = type(RECIPE[key])(value)
    return settings


def run_variant(variant: str, recipe: dict, corpus: Path, cache_dir: Path, tmp: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{variant}_", dir=tmp)) / "run"
    if variant == "plain":
        return run_plain(recipe, corpus, run_dir)
    return run_lmlab(variant, recipe, corpus, cache_dir, run_dir)


@run_quietly
def main(argv: list[str] | None, result: dict) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds of all variants")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--cache-dir", default=os.environ.get("LMLAB_CACHE", "~/.cache/lmlab"),
                        help="the corpus file and lmlab's token cache (paths.cache_dir)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"recipe settings changed on both sides, e.g. max_iters=300 (keys: {', '.join(RECIPE)})")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every run (default: torch's own choice)")
    parser.add_argument("--smoke", action="store_true",
                        help="10 steps on 60 KB, one thread, no warm-up: checks the benchmark runs")
    args = parser.parse_args(argv)
    recipe = {**RECIPE, **(SMOKE if args.smoke else {}), **parse_settings(args.set)}
    if args.threads or args.smoke:  # smoke: one thread, so a busy machine does not make threads spin
        os.environ["OMP_NUM_THREADS"] = str(args.threads or 1)  # the children's torch threads
    cache_dir = Path(args.cache_dir).expanduser()
    corpus = recipe_corpus(60_000 if args.smoke else SHAKESPEARE_BYTES, cache_dir / "benchmarks")
    result.update(device_info(), benchmark="recipe", recipe=recipe, omp_threads=os.environ.get("OMP_NUM_THREADS"),
                  corpus=str(corpus), repeats=args.repeats,
                  lmlab_overrides=lmlab_overrides(recipe, corpus, cache_dir),
                  variant_overrides={v: o for v, o in VARIANTS.items() if o is not None})
    rounds = result["rounds"] = []
    with tempfile.TemporaryDirectory(prefix="recipe_") as tmp:
        if not args.smoke:  # untimed: the OS file cache, lmlab's tokenizer and token cache
            warm_up = {**recipe, **SMOKE}
            for variant in args.variants:
                run_variant(variant, warm_up, corpus, cache_dir, Path(tmp))
        for _ in range(args.repeats):
            rounds.append({v: run_variant(v, recipe, corpus, cache_dir, Path(tmp)) for v in args.variants})
    if "plain" in args.variants:
        for runs in rounds:
            for run in runs.values():
                run["speed_vs_plain"] = round(runs["plain"]["wall_s"] / run["wall_s"], 3)
        result["speed_vs_plain"] = {v: median([r[v]["speed_vs_plain"] for r in rounds])
                                    for v in args.variants if v != "plain"}
    result["median"] = {v: {k: median(values) if None not in (values := [r[v][k] for r in rounds]) else None
                            for k in ("wall_s", "cpu_s", "first_step_s", "train_s", "train_loss", "val_loss")}
                        for v in args.variants}


if __name__ == "__main__":
    main()
