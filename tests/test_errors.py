"""Bad input fails before any work starts, as one line naming the key, the value and what is allowed.

Families, not examples: wrong types, out-of-range numbers, values outside a set, unknown or misspelled
keys, rules across groups, targets, resource bounds, unusable files and checkpoints, decoding settings.
"Before any work" is checked by what work leaves behind: no tokenizer or token cache entry.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from lmlab.cli import CONF_DIR
from lmlab.cli import report as report_cli
from lmlab.cli.train import train
from lmlab.cli.user_errors import EXIT_USER_ERROR, hydra_task, one_line_errors, user_error_message
from lmlab.errors import CheckpointError, InputError
from lmlab.loggers import resolve_wandb_mode
from lmlab.report import load_runs, read_metrics_csv

ROOT = Path(CONF_DIR).parent
# what third-party packages print to stderr when imported (torchao's optional kernels, torch's pytree
# registration warnings); not lmlab's output
IMPORT_NOISE = re.compile(r"torchao|_pytree\.py|^\s*$")


def cache_entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("tokenizers/*")) + sorted(cache.glob("tokens/*"))


def fails_before_work(make_cfg, tmp_path, *overrides) -> InputError:
    """train() on the tiny config with its own empty cache: the InputError, and no cache entry made."""
    cache = tmp_path / "fresh_cache"
    with pytest.raises(InputError) as error:
        train(make_cfg(*overrides, f"paths.cache_dir={cache}"))
    assert cache_entries(cache) == [], "data preparation ran before the error"
    assert "\n" not in str(error.value)
    return error.value


GROUPS = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}


@pytest.fixture(scope="module")
def cheap_cfg(corpus_dir, cache_dir, tmp_path_factory):
    """make_cfg for long tables: one Hydra composition per choice of group options, the key=value overrides
    applied to a copy as Hydra applies them (parsed by its override parser), so each case costs no compose."""
    from conftest import compose_train
    from hydra.core.override_parser.overrides_parser import OverridesParser

    composed, parser = {}, OverridesParser.create()
    root = tmp_path_factory.mktemp("cheap")

    def make(*overrides: str):
        choices = tuple(o for o in overrides if o.split("=", 1)[0] in GROUPS)
        if choices not in composed:
            composed[choices] = compose_train(corpus_dir, cache_dir, root / "run", *choices)
        cfg = copy.deepcopy(composed[choices])
        for override in parser.parse_overrides([o for o in overrides if o not in choices]):
            with open_dict(cfg):
                if override.is_delete():
                    parent, _, leaf = override.key_or_group.rpartition(".")
                    OmegaConf.select(cfg, parent).pop(leaf) if parent else cfg.pop(leaf)
                else:
                    OmegaConf.update(cfg, override.key_or_group, override.value(), merge=False,
                                     force_add=override.is_add())
        HydraConfig.instance().set_config(cfg)
        return cfg

    return make


BAD_CONFIG = {
    "wrong type": [
        (["optimizer.lr=fast"], r"^optimizer\.lr='fast': must be a number > 0$"),
        (["decoding.temperature=hot"], r"^decoding\.temperature='hot': must be a number >= 0$"),
        (["trainer.max_steps=ten"], r"^trainer\.max_steps='ten': must be an integer >= -1$"),
        (["model.n_layer=2.5"], r"^model\.n_layer=2\.5: must be an integer >= 1$"),
        (["trainer.accumulate_grad_batches=true"], r"trainer\.accumulate_grad_batches=true: must be an integer"),
        (["data.corpus.paths=123"], r"data\.corpus\.paths=123: must be a string or a non-empty list"),
        (["optimizer.betas=0.9"], r"optimizer\.betas=0\.9: must be a list of 2 values"),
    ],
    "out of range": [
        (["optimizer.lr=0"], r"optimizer\.lr=0: must be a number > 0"),
        (["optimizer.lr=-1e-3"], r"optimizer\.lr=-0\.001: must be a number > 0"),
        (["optimizer.lr=nan"], r"optimizer\.lr=nan: must be a number > 0"),
        (["optimizer.betas=[0.9,1.0]"], r"optimizer\.betas=\[0\.9, 1\.0\]: .* each a number in \[0, 1\)"),
        (["optimizer.eps=-1"], r"optimizer\.eps=-1: must be a number >= 0"),
        (["trainer.gradient_clip_val=-1"], r"trainer\.gradient_clip_val=-1: must be null or a number >= 0"),
        (["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches=0: must be an integer >= 1"),
        (["trainer.max_steps=0"], r"trainer\.max_steps=0: must be a positive number"),
        (["data.batch_size=0"], r"data\.batch_size=0: must be an integer >= 1"),
        (["data.val_fraction=1.0"], r"data\.val_fraction=1\.0: must be a number in \(0, 1\)"),
        (["decoding.top_p=0"], r"decoding\.top_p=0: must be a number in \(0, 1\]"),
        (["decoding.temperature=-1"], r"decoding\.temperature=-1: must be a number >= 0"),
        (["decoding=beam", "decoding.num_beams=0"], r"decoding\.num_beams=0: must be an integer >= 1"),
        (["loss.label_smoothing=1.5"], r"loss\.label_smoothing=1\.5: must be a number in \[0, 1\]"),
        (["sched.warmup_steps=-1"], r"sched\.warmup_steps=-1: must be an integer >= 0"),
        (["model.dropout=1.0"], r"model\.dropout=1\.0: must be a number in \[0, 1\)"),
        (["callbacks.decoding.num_prompts=0"], r"callbacks\.decoding\.num_prompts=0: must be an integer >= 1"),
    ],
    "not an allowed value": [
        (["model.norm=batchnorm"], r"model\.norm='batchnorm': must be one of 'layernorm', 'rmsnorm'"),
        (["model.activation=swish"], r"model\.activation='swish': must be one of 'relu', 'gelu'"),
        (["logger=wandb", "logger.wandb.mode=cloud"], r"logger\.wandb\.mode='cloud': must be one of 'auto'"),
        (["trainer.precision=17"], r"trainer\.precision=17: must be null or one of '32-true'"),
        (["trainer.strategy=dp"], r"trainer\.strategy='dp': not a Lightning strategy; did you mean ddp\?"),
        (["data.dedup=fuzzy"], r"data\.dedup='fuzzy': must be one of 'none', 'exact', 'near'"),
        (["callbacks.stability.policy=abort"], r"callbacks\.stability\.policy='abort': must be one of 'log'"),
        (["model=hf", "model.architecture=lama"], r"model\.architecture='lama': not a Hugging Face .*llama\?"),
        (["model=hf", "model.pretrained=/nonexistent/model"], r"model\.pretrained=/nonexistent/model: does not exist"),
    ],
    "unknown key": [
        (["+samples.num_promts=5"], r"^samples\.num_promts=5: unknown key; did you mean samples\.num_prompts\?$"),
        (["+optimizer.weight_decy=0.1"], r"optimizer\.weight_decy=0\.1: unknown key; did you mean "
                                         r"optimizer\.weight_decay\?"),
        (["+trainer.max_step=4"], r"trainer\.max_step=4: unknown key; did you mean trainer\.max_steps\?"),
        (["+decoding.max_new_tokens=4"], r"decoding\.max_new_tokens=4: unknown key"),
        (["+model.n_layers=2"], r"model\.n_layers=2: unknown key; did you mean model\.n_layer\?"),
        (["+data.dedupe=near"], r"data\.dedupe='near': unknown key; did you mean data\.dedup\?"),
        (["loss=contrastive", "+data.vocab_sise=3"], r"data\.vocab_sise=3: unknown key; did you mean "
                                                     r"data\.vocab_size\?"),
        (["model=hf", "+model.num_hiden_layers=2"], r"model\.num_hiden_layers=2: not a field of the llama config; "
                                                    r"did you mean model\.num_hidden_layers\?"),
    ],
    "rule across keys": [
        (["sched.warmup_steps=6"], r"sched\.warmup_steps=6: must be less than sched\.total_steps=6"),
        (["sched=constant", "sched.warmup_steps=50"],
         r"sched\.warmup_steps=50: must be less than sched\.total_steps=6"),
        (["data.block_size=128"], r"data\.block_size=128: must be at most the model's context \(64"),
        (["model.vocab_size=300"], r"model\.vocab_size=300: must be at least data\.vocab_size=384"),
        (["model.n_embd=30", "model.n_head=4"], r"model\.n_embd=30: must be divisible by model\.n_head=4"),
        (["decoding=beam", "decoding.num_return_sequences=5"],
         r"decoding\.num_return_sequences=5: must be at most decoding\.num_beams=4"),
        (["callbacks.stability.log_every_n_steps=3", "trainer.log_every_n_steps=2"],
         r"callbacks\.stability\.log_every_n_steps=3: must be a multiple of the Trainer's log_every_n_steps=2"),
        (["callbacks.decoding.max_new_tokens=60"], r"callbacks\.decoding\.max_new_tokens=60: .* at most the model"),
        (["trainer.gradient_clip_algorithm=value", "trainer.gradient_clip_val=0"],
         r"trainer\.gradient_clip_val=0: with trainer\.gradient_clip_algorithm='value' would zero every gradient"),
        (["optimizer=sgd", "optimizer.momentum=0"],
         r"optimizer\.nesterov=true: needs momentum > 0 \(optimizer\.momentum=0\)"),
    ],
    "target": [
        (["optimizer._target_=lmlab.optim.AdamX"], r"optimizer\._target_='lmlab\.optim\.AdamX': lmlab\.optim has no "
                                                   r"'AdamX'; did you mean lmlab\.optim\.Adam\?"),
        # a class lmlab has no schema for: its signature types the keys
        (["optimizer._target_=torch.optim.RMSprop", "~optimizer.betas", "optimizer.eps=tiny"],
         r"optimizer\.eps='tiny': must be a number"),
        (["optimizer._target_=torch.optim.RMSprop", "~optimizer.betas", "+optimizer.centred=true"],
         r"optimizer\.centred=true: unknown key; did you mean optimizer\.centered\?"),
    ],
    "resources": [
        (["data.vocab_size=10000000"], r"data\.vocab_size=10000000: more than this corpus can give; a byte-level "
                                       r"BPE learns at most one token per byte"),
        (["model.n_layer=8", "model.n_embd=65536", "model.n_head=16", "data.block_size=32"],
         r"model: 41\d\.\d\dB parameters .* do not fit: training needs at least \d+\.\d GB"),
    ],
    "checkpoint": [
        (["ckpt_path=/nonexistent/last.ckpt"], r"ckpt_path=/nonexistent/last\.ckpt: .* does not exist"),
        (["ckpt_path=last"], r"ckpt_path=last: .*checkpoints/last\.ckpt does not exist .*hydra\.run\.dir"),
        (["loss=distill", "loss.teacher=/nonexistent/run"], r"loss\.teacher=/nonexistent/run: does not exist"),
        (["decoding=speculative", "decoding.draft=/nonexistent.ckpt"], r"decoding\.draft=/nonexistent\.ckpt: does "
                                                                        r"not exist"),
    ],
}


@pytest.mark.parametrize("overrides,error", [pytest.param(o, e, id=f"{family}: {' '.join(o)}")
                                             for family, cases in BAD_CONFIG.items() for o, e in cases])
def test_bad_config_fails_before_work_with_one_line(cheap_cfg, tmp_path, overrides, error):
    assert re.search(error, str(fails_before_work(cheap_cfg, tmp_path, *overrides)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_gpu_trainer_without_a_gpu_is_refused_before_work(make_cfg, tmp_path):
    error = fails_before_work(make_cfg, tmp_path, "trainer=gpu")
    assert str(error).startswith("trainer.accelerator='gpu': no CUDA device is available on this machine")


def test_strategy_ddp_is_refused_inside_a_multirun(make_cfg):
    cfg = make_cfg("trainer=ddp")
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(InputError, match="use trainer=ddp_spawn in sweeps"):
        train(cfg)


def test_unset_required_value_is_named(make_cfg, tmp_path, capsys):
    """A `???` left unset (loss=distill without a teacher) is a user's mistake: one line naming the key."""
    cfg = make_cfg("loss=distill", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(SystemExit) as stop:
        hydra_task(train)(cfg)
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == "Error: loss.teacher=???: is required; give loss.teacher=<value> on the " \
                                      "command line\n"


# ---- data --------------------------------------------------------------------------------------


def corpus_of(tmp_path: Path, files: dict[str, bytes], name: str = "corpus") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_every_unusable_file_is_named_before_the_tokenizer(make_cfg, corpus_dir, tmp_path):
    text = (corpus_dir / "json_decoder.py").read_bytes()
    folder = corpus_of(tmp_path, {"good.py": text, "image.png": b"\x89PNG\r\n\x1a\n\x00\x00", "latin1.txt":
                                  "café".encode("latin-1") * 100, "blob.bin": bytes(range(256)) * 4,
                                  "word.txt": b"a" * 50_000, "empty.txt": b""})
    error = str(fails_before_work(make_cfg, tmp_path, f"data.corpus.paths={folder}"))
    assert error.startswith("data.corpus: 4 of 6 files cannot be used: ")
    for name, why in (("image.png", "binary"), ("latin1.txt", "not UTF-8 text"), ("blob.bin", "binary"),
                      ("word.txt", "50000-byte word")):
        assert re.search(rf"{name} (is|has a) [^;]*{why}", error), name
    assert "empty.txt" not in error and "good.py" not in error


def test_many_bad_files_are_counted_after_the_first_few(make_cfg, tmp_path):
    folder = corpus_of(tmp_path, {f"{i}.bin": b"\xff\xfe" * 50 for i in range(12)})
    error = str(fails_before_work(make_cfg, tmp_path, f"data.corpus.paths={folder}"))
    assert "12 of 12 files" in error and error.count("is not UTF-8") == 5 and "and 7 more" in error


def test_a_50_mb_line_is_refused_in_a_fraction_of_training_it(make_cfg, tmp_path):
    """A single 50 MB word would take the BPE trainer hours (quadratic in its length): refused by the scan."""
    folder = corpus_of(tmp_path, {"ok.txt": b"def f(x):\n    return x\n" * 500, "line.txt": b"x" * 50_000_000})
    error = str(fails_before_work(make_cfg, tmp_path, f"data.corpus.paths={folder}"))
    assert "line.txt has a 50000000-byte word" in error


@pytest.mark.parametrize("kind,error", [
    ("folder_without_files", r"data\.corpus\.paths='.*empty_folder': matches no file"),
    ("only_empty_files", r"data\.corpus\.paths='.*': all 2 matched files are empty"),
    ("glob_matching_nothing", r"data\.corpus\.paths='.*\*\.md': matches no file"),
    ("too_small_for_one_batch", r"data: the corpus has 24 bytes in 1 non-empty files, so at most 25 tokens, fewer "
                                r"than one batch for training and one for validation need .* = 514"),
])
def test_corpus_that_cannot_give_a_batch_is_refused_before_work(make_cfg, tmp_path, kind, error):
    paths = {
        "folder_without_files": lambda: corpus_of(tmp_path, {}, "empty_folder"),
        "only_empty_files": lambda: corpus_of(tmp_path, {"a.txt": b"", "b.txt": b""}),
        "glob_matching_nothing": lambda: tmp_path / "*.md",
        "too_small_for_one_batch": lambda: corpus_of(tmp_path, {"a.py": b"def f():\n    return 1\n\n\n"}),
    }[kind]()
    error_message = str(fails_before_work(make_cfg, tmp_path, f"data.corpus.paths={paths}", "data.vocab_size=258"))
    assert re.search(error, error_message)


def test_corpus_too_small_after_encoding_is_refused_before_training(make_cfg, tmp_path):
    """Bytes allow the batch, tokens do not: the exact check after encoding, still before the fit."""
    small = corpus_of(tmp_path, {"a.py": b"def f():\n    return 1\n" * 40, "b.py": b"x = [i * i for i in y]\n" * 40})
    with pytest.raises(InputError, match=r"data: the (validation|training) split has \d+ tokens"):
        train(make_cfg(f"data.corpus.paths={small}", "data.batch_size=20", f"paths.cache_dir={tmp_path / 'c'}"))
    assert not (tmp_path / "run" / "metrics.csv").exists()


# ---- the command line --------------------------------------------------------------------------


def run_cli(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "WANDB_MODE": "offline", **(env or {})})


def lmlab_stderr(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not IMPORT_NOISE.search(line)]


def test_train_py_prints_one_line_and_exits_2_before_any_work(corpus_dir, tmp_path):
    cache = tmp_path / "cache"
    proc = run_cli("train.py", "data=text_files", f"data.corpus.paths={corpus_dir}", f"paths.cache_dir={cache}",
                   f"hydra.run.dir={tmp_path / 'run'}", "optimizer.lr=fast", cwd=tmp_path)
    assert proc.returncode == EXIT_USER_ERROR
    assert lmlab_stderr(proc) == ["Error: optimizer.lr='fast': must be a number > 0"]
    assert cache_entries(cache) == [] and not (tmp_path / "run" / "metrics.csv").exists()


def test_hydra_errors_are_one_line_and_hydra_full_error_shows_the_trace(corpus_dir, tmp_path, capsys, monkeypatch):
    from lmlab.cli import train as train_cli

    args = ["train.py", "data=text_files", f"data.corpus.paths={corpus_dir}", f"paths.cache_dir={tmp_path}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", [*args, "optimizer=adamx"])
    with pytest.raises(SystemExit) as stop:
        train_cli.main()
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == ("Error: In 'train': Could not find 'optimizer/adamx'; Available options in "
                                       "'optimizer': adam, adamw, lion, muon, sgd, torch_adamw\n")
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", [*args, "optimizer.lr=fast"])
    with pytest.raises(InputError, match=r"optimizer\.lr='fast'"):
        train_cli.main()
    assert os.environ["HYDRA_FULL_ERROR"] == "1"


def test_generate_py_refuses_decoding_settings_before_loading_the_model(tmp_path):
    """The checkpoint is a text file: were it loaded, the error would be about it, not about decoding."""
    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint\n")
    proc = run_cli("generate.py", f"ckpt={fake}", "prompt=def f(", "decoding.temperature=-1", cwd=tmp_path)
    assert proc.returncode == EXIT_USER_ERROR
    assert lmlab_stderr(proc) == ["Error: decoding.temperature=-1: must be a number >= 0"]


@pytest.mark.parametrize("overrides,error", [
    (["prompt=x", "decoding.top_p=0"], "decoding.top_p=0: must be a number in (0, 1]"),
    (["prompt=x", "decoding=beam", "decoding.num_beams=0"], "decoding.num_beams=0: must be an integer >= 1"),
    (["prompt=x", "decoding=speculative"], "decoding.draft=???: is required; give decoding.draft=<value> on the "
                                           "command line"),
    (["prompt=x", "max_new_tokens=0"], "max_new_tokens=0: must be an integer >= 1"),
    (["prompt=x", "+prompts=3"], "prompts=3: unknown key; did you mean prompt?"),
    (["prompt_file=/nonexistent.txt"], "prompt_file=/nonexistent.txt: does not exist"),
    (["prompt=x", "prompt_file=p.txt"], 'prompt, prompt_file: give exactly one of prompt="..." or prompt_file=<file '
                                        'with one prompt per line>'),
    (["prompt=x", "device=tpu"], "device='tpu': must be auto, cpu, cuda, cuda:<index> or mps"),
    (["prompt=x", "decoding=bean"], "In 'generate': Could not find 'decoding/bean'; Available options in "
                                    "'decoding': beam, greedy, prompt_lookup, sample, speculative, suite"),
])
def test_generate_settings_are_one_line_with_their_key(tmp_path, capsys, monkeypatch, overrides, error):
    from lmlab.cli import generate

    fake = tmp_path / "model.ckpt"
    fake.write_text("not a checkpoint\n")
    monkeypatch.setattr(sys, "argv", ["generate.py", f"ckpt={fake}", *overrides])
    with pytest.raises(SystemExit) as stop:
        generate.main()
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"Error: {error}\n"


def test_max_new_tokens_past_the_context_is_named_before_decoding(trained_run, tmp_path, generate_cfg):
    from lmlab.cli.generate import generate

    with pytest.raises(InputError, match=r"^max_new_tokens=1000: the longest prompt \(\d+ tokens\) \+ "
                                         r"max_new_tokens must be at most the model's context \(64 tokens\)$"):
        generate(generate_cfg(f"ckpt={trained_run}", "prompt=def f(", "max_new_tokens=1000"))


def test_a_user_error_inside_instantiate_is_one_line_and_a_bug_keeps_its_traceback():
    try:
        try:
            raise CheckpointError("teacher", "x.ckpt", "not a checkpoint (truncated)", prefix="loss.")
        except CheckpointError as e:
            raise InstantiationException("Error in call to target 'TeacherLoss':\nCheckpointError(...)") from e
    except InstantiationException as wrapped:
        assert user_error_message(wrapped) == "loss.teacher=x.ckpt: not a checkpoint (truncated)"
    assert user_error_message(ZeroDivisionError("division by zero")) is None
    assert user_error_message(InstantiationException("Error in call to target 'x':\nTypeError()")) is None
    with pytest.raises(ZeroDivisionError), one_line_errors():
        raise ZeroDivisionError


def test_a_multirun_job_raises_its_input_error_as_it_is(make_cfg):
    cfg = make_cfg("optimizer.lr=-1")
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(InputError, match=r"optimizer\.lr=-1"):
        hydra_task(train)(cfg)


# ---- checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def bad_checkpoints(tmp_path, trained_run) -> dict[str, Path]:
    """A text file named .ckpt and a real checkpoint cut in half."""
    text = tmp_path / "text.ckpt"
    text.write_text("not a checkpoint\n")
    half = tmp_path / "half.ckpt"
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    half.write_bytes(data[: len(data) // 2])
    return {"text": text, "half": half}


@pytest.mark.parametrize("kind", ["text", "half"])
@pytest.mark.parametrize("path_key", ["ckpt_path", "loss.teacher", "decoding.draft"])
def test_unusable_checkpoint_is_one_line_naming_it(make_cfg, tmp_path, capsys, bad_checkpoints, kind, path_key):
    path = bad_checkpoints[kind]
    extra = {"ckpt_path": [f"ckpt_path={path}"], "loss.teacher": ["loss=distill", f"loss.teacher={path}"],
             "decoding.draft": ["decoding=speculative", f"decoding.draft={path}"]}[path_key]
    cfg = make_cfg(*extra, f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(SystemExit) as stop:
        hydra_task(train)(cfg)
    assert stop.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"Error: {path_key}=") and str(path) in line
    assert cache_entries(tmp_path / "cache") == []


def test_generate_with_an_unusable_checkpoint_is_one_line(tmp_path, capsys, monkeypatch, bad_checkpoints):
    from lmlab.cli import generate

    monkeypatch.setattr(sys, "argv", ["generate.py", f"ckpt={bad_checkpoints['half']}", "prompt=x"])
    with pytest.raises(SystemExit) as stop:
        generate.main()
    assert stop.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("Error: ckpt=") and "half.ckpt" in line


def test_resuming_a_checkpoint_of_another_model_is_refused_before_work(make_cfg, trained_run, tmp_path):
    error = fails_before_work(make_cfg, tmp_path, f"ckpt_path={trained_run}", "model.n_embd=64")
    assert re.search(r"ckpt_path=.*: this config changes what the checkpoint at step 30 was trained with "
                     r"\(checkpoint -> config\): model.n_embd 32 -> 64; ", str(error))


# ---- lmlab report ------------------------------------------------------------------------------


@pytest.mark.parametrize("content,error", [
    ("", r"metrics\.csv: not a metrics file \(its header has no 'step' column; found nothing\)"),
    ("step,train/loss\n", r"metrics\.csv: has no logged values"),
    ("epoch,loss\n0,1.0\n", r"metrics\.csv: not a metrics file \(its header has no 'step' column; found epoch, loss"),
    ("step,train/loss\n0,2.5\n1,oops\n", r"metrics\.csv: line 3, column 'train/loss': 'oops' is not a number"),
    ("step,train/loss\n0,2.5,7\n", r"metrics\.csv: line 2 has more cells than the header has columns"),
])
def test_malformed_metrics_csv_is_named(tmp_path, content, error):
    path = tmp_path / "metrics.csv"
    path.write_text(content)
    with pytest.raises(InputError, match=error):
        read_metrics_csv(path)


def test_report_of_an_empty_run_is_one_line_and_a_sweep_skips_the_bad_job(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("")
    with pytest.raises(SystemExit) as stop:
        report_cli.main([str(run)])
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"Error: {run / 'metrics.csv'}: not a metrics file (its header has no " \
                                      "'step' column; found nothing)\n"

    sweep = tmp_path / "sweep"
    for job, rows in (("0", "step,val/loss\n0,3.0\n9,2.0\n"), ("1", "step,val/loss\n0,garbage\n"), ("2", "")):
        (sweep / job).mkdir(parents=True)
        (sweep / job / "metrics.csv").write_text(rows)
    with pytest.warns(UserWarning, match=r"skipping job 1: .*'garbage' is not a number") as warned:
        runs = load_runs(sweep)
    assert [r.name for r in runs] == ["0"] and any("skipping job 2" in str(w.message) for w in warned)


@pytest.mark.parametrize("overrides,error", [
    (["model.n_layer=0"], "model.n_layer=0: must be an integer >= 1"),
    (["data.block_size=512"], "data.block_size=512: must be at most the model's context (256: model.block_size "
                              "or model.max_position_embeddings)"),
    (["optimizer=adamx"], "In 'train': Could not find 'optimizer/adamx'; Available options in 'optimizer': adam, "
                          "adamw, lion, muon, sgd, torch_adamw"),
])
def test_lmlab_cost_refuses_bad_config_in_one_line(capsys, overrides, error):
    from lmlab.cli import cost

    with pytest.raises(SystemExit) as stop:
        cost.main(["--measure-steps", "1", *overrides])
    assert stop.value.code == EXIT_USER_ERROR
    assert capsys.readouterr().err == f"Error: {error}\n"


# ---- properties --------------------------------------------------------------------------------



def examples(n: int) -> settings:
    """Deterministic (derandomized) runs of n examples: the same inputs on every machine and run."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


DEFAULT_EXAMPLES, SLOW_EXAMPLES = 20, 300
TINY = ["debug=fast", "callbacks=decoding", "callbacks.decoding.num_prompts=1", "callbacks.decoding.prompt_tokens=4",
        "callbacks.decoding.max_new_tokens=2", "data.block_size=16", "data.batch_size=2", "model.n_embd=16",
        "model.n_head=2", "model.block_size=32"]
# drawn config values: numbers of every sign and size, non-finite ones, text, null, lists
ANY_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 10**6))
ODD_VALUE = st.one_of(st.none(), st.booleans(), st.sampled_from(["fast", "", "1e-3"]),
                      st.lists(st.floats(-1, 2, width=32), max_size=3))
SETTINGS = {
    "optimizer.lr": st.one_of(st.floats(1e-5, 1e-2), ANY_NUMBER, ODD_VALUE),
    "optimizer.betas": st.one_of(st.lists(st.floats(-0.5, 1.5, width=32), min_size=0, max_size=3), ODD_VALUE),
    "optimizer.weight_decay": st.one_of(st.floats(0, 0.3), ANY_NUMBER),
    "data.batch_size": st.one_of(st.integers(1, 4), ANY_NUMBER, ODD_VALUE),
    "data.block_size": st.one_of(st.integers(1, 40), ANY_NUMBER),
    "sched.warmup_steps": st.one_of(st.integers(0, 10), ANY_NUMBER),
    "trainer.max_steps": st.one_of(st.integers(-2, 20), ODD_VALUE),
    "trainer.gradient_clip_val": st.one_of(st.none(), st.floats(0, 2), ANY_NUMBER),
    "trainer.accumulate_grad_batches": st.one_of(st.integers(-1, 3), ANY_NUMBER),
    "decoding.temperature": st.one_of(st.floats(0, 2), ANY_NUMBER, ODD_VALUE),
    "decoding.top_p": st.one_of(st.floats(0, 1), ANY_NUMBER),
    "decoding.top_k": st.one_of(st.integers(-2, 100), ANY_NUMBER),
}


@pytest.fixture(scope="module")
def tiny_cfg(corpus_dir, tmp_path_factory):
    from conftest import compose_train

    root = tmp_path_factory.mktemp("property")
    return compose_train(corpus_dir, root / "cache", root / "run", *TINY)


def trains_one_step_or_input_error(cfg) -> None:
    """The property: one fast_dev_run step, or lmlab's InputError; any other exception fails the test."""
    HydraConfig.instance().set_config(cfg)
    try:
        train(cfg)
    except InputError as e:
        assert "\n" not in str(e)
        event(f"InputError: {str(e).split('=')[0].split(':')[0]}")
    else:
        event("trained one step")


# one to three settings per example, so each is explored past the others' errors
SOME_SETTINGS = st.lists(st.sampled_from(sorted(SETTINGS)), min_size=1, max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({key: SETTINGS[key] for key in keys}))


def config_values_property(tiny_cfg, values: dict) -> None:
    cfg = copy.deepcopy(tiny_cfg)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    trains_one_step_or_input_error(cfg)


@examples(DEFAULT_EXAMPLES)
@given(SOME_SETTINGS)
def test_any_config_values_train_one_step_or_fail_with_input_error(tiny_cfg, values):
    config_values_property(tiny_cfg, values)


@pytest.mark.slow
@examples(SLOW_EXAMPLES)
@given(SOME_SETTINGS)
def test_any_config_values_longer_profile(tiny_cfg, values):
    config_values_property(tiny_cfg, values)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=400)
CORPUS_FILE = st.one_of(st.binary(max_size=600), TEXT.map(str.encode), st.just(b"def f(x):\n    return x + 1\n" * 9))
CORPUS_FILES = st.lists(CORPUS_FILE, min_size=1, max_size=3)


def corpus_bytes_property(tiny_cfg, folder: Path, files: list[bytes]) -> None:
    for i, content in enumerate(files):
        (folder / f"{i}.txt").write_bytes(content)
    cfg = copy.deepcopy(tiny_cfg)
    OmegaConf.update(cfg, "data.corpus.paths", str(folder), merge=False)
    OmegaConf.update(cfg, "data.vocab_size", 260, merge=False)  # the least a byte-level BPE can have, + 2
    trains_one_step_or_input_error(cfg)


@examples(DEFAULT_EXAMPLES)
@given(CORPUS_FILES)
def test_any_bytes_as_corpus_files_train_one_step_or_fail_with_input_error(tiny_cfg, tmp_path_factory, files):
    corpus_bytes_property(tiny_cfg, tmp_path_factory.mktemp("bytes"), files)


@pytest.mark.slow
@examples(SLOW_EXAMPLES)
@given(CORPUS_FILES)
def test_any_bytes_as_corpus_files_longer_profile(tiny_cfg, tmp_path_factory, files):
    corpus_bytes_property(tiny_cfg, tmp_path_factory.mktemp("bytes"), files)


# ---- what stayed as it was ---------------------------------------------------------------------


def test_wandb_is_offline_without_a_key_and_online_with_one(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_wandb_mode("auto") == "offline"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    netrc.chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
