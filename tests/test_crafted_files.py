"""Files and numbers that claim more than they hold (issue 17): a crafted checkpoint header, a draft that does not
fit its target, beams that cannot fit, a device this machine lacks. Each is refused in one line before anything
large is allocated; the real crafted files are checkpoints of a trained run with their metadata rewritten."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.checkpoint import check_checkpoint, load_checkpoint
from lmlab.cli import CONF_DIR
from lmlab.cli.generate import generate
from lmlab.cli.quiet import silence_library_noise
from lmlab.devices import check_device
from lmlab.errors import ArgumentError, CheckpointError, InputError
from lmlab.models import GPT
from lmlab.quantization import quantize
from lmlab.quantization.checkpoint import save_quantized

ROOT = Path(CONF_DIR).parent
CLAIM = {"n_embd": 8192, "n_layer": 8}  # the header: ~6.4 B parameters, 25 GB of float32


@pytest.fixture(scope="module")
def target(trained_run) -> Path:
    return trained_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def quantized(target, tmp_path_factory) -> Path:
    model, tokenizer, _ = load_checkpoint(target)
    return save_quantized(quantize(model, "int8"), tmp_path_factory.mktemp("q") / "model.safetensors", tokenizer)


def rewrite_safetensors_metadata(source: Path, out: Path, **config) -> Path:
    """``source`` with its header's model config changed (tensors and their offsets untouched)."""
    raw = source.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    spec = json.loads(header["__metadata__"]["model"])
    spec["config"].update(config)
    header["__metadata__"]["model"] = json.dumps(spec)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    out.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
    return out


def rewrite_checkpoint(source: Path, out: Path, fresh_weights: bool = False, tokenizer: dict | None = None,
                       **config) -> Path:
    """``source`` with its 'lmlab' entry's model config changed; ``fresh_weights``: the stored tensors are those
    of the changed model (an honest checkpoint of another model), else the old ones (a lying header)."""
    ckpt = torch.load(source, weights_only=True)
    ckpt["lmlab"]["model"]["config"].update(config)
    if fresh_weights:
        model = GPT(**ckpt["lmlab"]["model"]["config"])
        ckpt["state_dict"] = {f"model.{k}": v for k, v in model.state_dict().items()}
    if tokenizer is not None:
        ckpt["lmlab"]["tokenizer"] = tokenizer
    torch.save(ckpt, out)
    return out


# runs a command and writes its peak resident KB: started from this small process, the command's peak is its
# own (a process started straight from pytest inherits pytest's peak across exec, gigabytes late in a suite)
PEAK_OF = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[2:]); "
           "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(rc)")


def run_measured(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str, float, float]:
    """(exit status, stderr, seconds, peak resident MB) of a real process."""
    err, peak = cwd / "stderr.txt", cwd / "peak_kb.txt"
    start = time.monotonic()
    with open(err, "w") as stderr:
        proc = subprocess.run([sys.executable, "-c", PEAK_OF, str(peak), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=stderr, env={**os.environ, "WANDB_MODE": "offline"}, timeout=timeout)
    return proc.returncode, err.read_text(), time.monotonic() - start, int(peak.read_text()) / 1024


def test_generate_py_refuses_a_crafted_safetensors_header_in_megabytes(quantized, tmp_path):
    """The issue's file: a shared .safetensors whose header claims n_embd=8192, n_layer=8 over a tiny model's
    tensors. Refused from the header in one line; the process never grows past what importing torch takes."""
    crafted = rewrite_safetensors_metadata(quantized, tmp_path / "crafted.safetensors", **CLAIM)
    rc, err, seconds, peak_mb = run_measured(
        [sys.executable, str(ROOT / "generate.py"), f"ckpt={crafted}", "prompt=def f(", "max_new_tokens=4"], tmp_path)
    assert rc == 2, err
    assert err.strip().splitlines() == [
        f"Error: ckpt={crafted}: its header describes a model that its tensors do not hold: tensor wte.weight is "
        "[384, 32] in the file, but the described model needs [384, 8192]; refused before building it"]
    assert peak_mb < 1500, f"{peak_mb:.0f} MB: the claimed model was allocated"
    print(f"refused in {seconds:.1f} s, peak {peak_mb:.0f} MB")


@pytest.mark.parametrize("claim, error", [
    (CLAIM, "needs [384, 8192]; refused before building it"),
    ({"n_layer": 10**7}, "claims 10000000 layers, but the file stores only"),  # a million empty layers: minutes
    ({"vocab_size": 10**9}, "tensor wte.weight is [384, 32] in the file, but the described model needs [1000000000"),
    ({"block_size": 10**8}, "tensor wpe.weight is [64, 32] in the file"),
])
@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_a_header_claiming_another_model_is_refused_before_building_it(kind, claim, error, target, quantized,
                                                                       tmp_path):
    if kind == "safetensors":
        crafted = rewrite_safetensors_metadata(quantized, tmp_path / "crafted.safetensors", **claim)
    else:
        crafted = rewrite_checkpoint(target, tmp_path / "crafted.ckpt", **claim)
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=error.replace("[", r"\[").replace("]", r"\]")):
        check_checkpoint(crafted)
    assert time.monotonic() - start < 5


def test_a_hugging_face_folder_whose_config_claims_another_model_is_refused(target, tmp_path):
    from lmlab.export import export_hf

    model, tokenizer, _ = load_checkpoint(target)
    folder = export_hf(model, tokenizer, tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    config.update(n_embd=8192)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"its config.json describes a model that its tensors do not hold: "
                                              r"tensor wte.weight is \[384, 32\] in the file, but the described model "
                                              r"needs \[384, 8192\]"):
        check_checkpoint(folder)


def test_an_honest_model_larger_than_memory_is_refused_before_loading(target, generate_cfg, monkeypatch):
    monkeypatch.setattr("lmlab.config.resources.available_memory", lambda device: (10_000, "a tiny test budget"))
    with pytest.raises(InputError, match=rf"ckpt={target}: its model \(0.00B parameters\) needs 0.0 GB as loading "
                                         "builds it, more than the 0.0 GB of a tiny test budget"):
        generate(generate_cfg(f"ckpt={target}", "prompt=def f(", "max_new_tokens=4"))


@pytest.mark.parametrize("overrides, lead", [
    (["decoding=beam", "decoding.num_beams=10000000"], "decoding.num_beams=10000000: decoding needs at least"),
    (["decoding=suite", "decoding.beam.num_beams=10000000"], "decoding.beam.num_beams=10000000: decoding needs"),
])
def test_beams_that_cannot_fit_are_refused_before_allocation(overrides, lead, target, generate_cfg):
    start = time.monotonic()
    with pytest.raises(InputError, match=lead) as error:
        generate(generate_cfg(f"ckpt={target}", "prompt=def f(", "max_new_tokens=4", *overrides))
    assert "KV cache" in str(error.value) and "\n" not in str(error.value)
    assert time.monotonic() - start < 10


def test_many_prompts_that_cannot_fit_name_the_prompt_file(target, generate_cfg, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(\n" * 50)
    monkeypatch.setattr("lmlab.config.resources.available_memory", lambda device: (400_000, "a test budget"))
    with pytest.raises(InputError, match=rf"prompt_file={prompts} \(50 prompts\): decoding needs at least"):
        generate(generate_cfg(f"ckpt={target}", f"prompt_file={prompts}", "max_new_tokens=4"))


@pytest.fixture(scope="module")
def drafts(target, tmp_path_factory) -> dict[str, Path]:
    """Honest draft checkpoints that do not fit the target: another vocabulary, a shorter context, another
    tokenizer of the same size (two tokens' ids swapped), a larger model."""
    folder = tmp_path_factory.mktemp("drafts")
    tokenizer = torch.load(target, weights_only=True)["lmlab"]["tokenizer"]
    spec = json.loads(tokenizer["json"])
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    swapped = {**tokenizer, "json": json.dumps(spec)}
    return {
        "vocab": rewrite_checkpoint(target, folder / "vocab.ckpt", fresh_weights=True, vocab_size=512),
        "context": rewrite_checkpoint(target, folder / "context.ckpt", fresh_weights=True, block_size=8),
        "tokenizer": rewrite_checkpoint(target, folder / "tokenizer.ckpt", tokenizer=swapped),
        "larger": rewrite_checkpoint(target, folder / "larger.ckpt", fresh_weights=True, n_layer=2),
    }


@pytest.mark.parametrize("draft, error", [
    ("vocab", "its vocabulary has 512 tokens, the target's 384"),
    ("context", r"its context \(8 tokens\) is shorter than the prompt \+ new tokens to decode"),
    ("tokenizer", "was trained with another tokenizer than the target"),
])
def test_a_draft_that_does_not_fit_the_target_is_named_as_the_draft(draft, error, drafts, target, generate_cfg):
    with pytest.raises(ArgumentError, match=rf"^decoding.draft={drafts[draft]}: {error}"):
        generate(generate_cfg(f"ckpt={target}", "prompt=def f(", "max_new_tokens=8", "decoding=speculative",
                              f"decoding.draft={drafts[draft]}"))


def test_a_draft_larger_than_its_target_is_warned_about_in_one_line(drafts, target, generate_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="lmlab"):
        generate(generate_cfg(f"ckpt={target}", "prompt=def f(", "max_new_tokens=4", "decoding=speculative",
                              f"decoding.draft={drafts['larger']}"))
    (warning,) = [r.getMessage() for r in caplog.records if "draft" in r.getMessage()]
    assert warning.startswith(f"decoding.draft={drafts['larger']}: the draft has ") and "slower" in warning


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_generate_py_device_cuda_on_a_cpu_torch_is_one_line(target, tmp_path):
    rc, err, _, _ = run_measured([sys.executable, str(ROOT / "generate.py"), f"ckpt={target}", "prompt=x",
                                  "device=cuda"], tmp_path)
    assert rc == 2
    assert err.strip().splitlines() == [f"Error: device='cuda': this torch build has no CUDA (torch "
                                        f"{torch.__version__}); use cpu or auto"]


@pytest.mark.parametrize("device, error", [
    ("cuda:x", "must be auto, cpu, cuda, cuda:<index> or mps"),
    ("tpu", "must be auto, cpu, cuda, cuda:<index> or mps"),
    ("mps", "MPS is not available here"),
])
def test_devices_this_machine_lacks_are_named(device, error):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ArgumentError, match=rf"device='{device}': {error}"):
        check_device(device)


def test_prompt_file_that_is_a_directory_says_so(target, generate_cfg, tmp_path):
    with pytest.raises(ArgumentError, match=rf"prompt_file={tmp_path}: is a directory, not a file of prompts"):
        generate(generate_cfg(f"ckpt={target}", f"prompt_file={tmp_path}"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_quantized_files_follow_the_umask(umask, target, tmp_path):
    model, tokenizer, _ = load_checkpoint(target)
    old = os.umask(umask)
    try:
        out = save_quantized(quantize(model, "int8"), tmp_path / "q.safetensors", tokenizer)
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_messages_a_user_cannot_act_on_are_silenced_and_others_still_show(caplog):
    silence_library_noise()
    lightning = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    transformers = logging.getLogger("transformers.configuration_utils")
    with caplog.at_level(logging.INFO):
        lightning.info("`weights_only` was not set, defaulting to `False`.")
        transformers.warning("Model config: eos_token_id must be `None` or an integer within the vocabulary (between "
                             "0 and 383), got 50256. This may result in unexpected behavior.")
        lightning.info("another message")
    assert [r.getMessage() for r in caplog.records] == ["another message"]


@pytest.mark.parametrize("overrides, error", [
    (["decoding=speculative", "decoding.draft={vocab}"],
     "callbacks.decoding.strategies.draft={vocab}: its vocabulary has 512 tokens, the target's 384"),
    (["decoding=beam", "decoding.num_beams=10000000"], "decoding.num_beams=10000000: decoding needs at least"),
])
def test_training_checks_the_decoding_callback_before_the_first_write(overrides, error, drafts, make_cfg, tmp_path):
    from lmlab.cli.train import train

    run_dir = tmp_path / "run"
    with pytest.raises((ArgumentError, InputError), match=f"^{error.format(**drafts)}"):
        train(make_cfg(*(o.format(**drafts) for o in overrides), "model.vocab_size=384", run_dir=run_dir))
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_training_refuses_a_draft_with_another_tokenizer_once_the_data_has_one(drafts, make_cfg, tmp_path):
    """The run's tokenizer exists only once its data is prepared: the draft is compared with it then, before
    the run's first write (like a distillation teacher's): the corrected command can take the same directory."""
    from lmlab.cli.train import train

    run_dir = tmp_path / "run"
    with pytest.raises(ArgumentError, match=f"^callbacks.decoding.strategies.draft={drafts['tokenizer']}: was "
                                            "trained with another tokenizer than the target"):
        train(make_cfg("decoding=speculative", f"decoding.draft={drafts['tokenizer']}", run_dir=run_dir))
    assert not run_dir.exists()


def test_an_interrupted_run_saves_without_lightnings_weights_only_note(run_train_py, tmp_path):
    """Lightning logs "`weights_only` was not set" when lmlab saves last.ckpt on SIGTERM/Ctrl-C; it is about what
    is saved (the full state a resume needs), not about loading, and reads as a hole: not shown."""
    proc = run_train_py("trainer.max_steps=50", "+callbacks.stop._target_=helpers.SigtermAtStep",
                        "+callbacks.stop.step=3", returncode=143)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "weights_only" not in proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_lmlab_quantize_checks_the_device_before_writing(target, tmp_path, capsys):
    from lmlab.cli.quantize import main as quantize_main

    out = tmp_path / "q.safetensors"
    with pytest.raises(SystemExit) as exit_info:
        quantize_main([str(target), "--mode", "int8", "--out", str(out), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (f"Error: --device='cuda': this torch build has no CUDA (torch "
                                               f"{torch.__version__}); use cpu or auto")
    assert not out.exists()


@pytest.mark.parametrize("accelerator, error", [
    ("tpu", "TPUs need the torch_xla package, which is not installed"),
    ("mps", r"MPS is not available here \(it needs macOS on Apple silicon\)"),
])
def test_an_accelerator_this_machine_lacks_is_one_line(accelerator, error, make_cfg):
    from lmlab.cli import resolved
    from lmlab.config import check_train_config

    if accelerator == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ArgumentError, match=rf"^trainer.accelerator='{accelerator}': {error}; use trainer=cpu"):
        check_train_config(resolved(make_cfg(f"trainer.accelerator={accelerator}")))
