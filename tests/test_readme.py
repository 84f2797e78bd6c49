"""Every command the README shows runs: the commands of its shell code blocks (and of inline code that starts
with a program: `python train.py ...` in a table) are read from README.md itself, so a documented command
cannot break, or be added, without a test seeing it.

Each command is either run, with short-run overrides appended where it trains (a 1-layer model, a few steps,
the tests' small corpus), or skipped for a reason that SKIPS states (it installs packages, needs a GPU,
SLURM, a browser, ...); a command that neither a program nor a skip knows fails the test. The default suite
checks the config of every training job and of `lmlab cost` (what refused `model=hf model.architecture=gpt2`);
`-m slow` runs every command as a real process, in README order, in a fresh directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV
from hydra.core.global_hydra import GlobalHydra

from lmlab.cli import compose

SHELL_BLOCKS = ("bash", "shell", "sh", "console")
PROGRAMS = ("python ", "python3 ", "lmlab ", "bash ", "sbatch ", "chromium ", "wandb ")  # an inline span is a command
GPU = torch.cuda.is_available()

# README paths and what the slow test puts in their place: the first run it trained, the last multirun, a file
# an earlier command made
PLACES = {"logs/train/runs/<run>": "run", "logs/distill_draft/runs/<run>": "run", "<run or multirun dir>": "run",
          "logs/train/multiruns/<date>_<time>": "multirun",
          "logs/scaling/isoflop": "multirun", "draft-int4.safetensors": "gpt-int4.safetensors"}
# (pattern in the command, reason): a command matching one is listed as skipped, never silently left out
SKIPS = [
    (r"\bpip install\b", "sets up a virtual environment and installs packages (network); its last step runs on its "
                         "own elsewhere in the README"),
    (r"^chromium\b", None if shutil.which("chromium") else "needs Chromium (not installed here)"),
    (r"-m pytest\b", "the test suite itself, this test included"),
    (r"^(sbatch|srun)\b|hydra/launcher=slurm", "needs SLURM"),
    (r"^wandb\b", "needs a W&B server"),
    (r"^vllm\b", "a vLLM server (CUDA GPU), which runs until it is stopped"),
    (r"trainer=(gpu|ddp|fsdp)\b|trainer\.accelerator=(gpu|cuda)|\bgpu\.sh\b",
     None if GPU else "needs CUDA GPUs"),
    (r"logs/optimizer_study/", "reads the optimizer study's sweep (experiments/), whose job directories its globs "
                               "name; no README command makes it"),
    (r"^python3? benchmarks/", "a benchmark (minutes); tests/test_benchmarks.py runs each one with --smoke"),
]


def readme_commands(text: str) -> list[str]:
    """Every command of the README's shell code blocks, then every inline code span that starts with a program,
    each once, in the order they appear."""
    return list(dict.fromkeys(block_commands(text) + inline_commands(text)))


def block_commands(text: str) -> list[str]:
    """The lines of the shell code blocks: continuation lines joined, comments and `$ ` prompts stripped."""
    commands = []
    for block in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        if block.group(1) not in SHELL_BLOCKS:
            continue
        for line in re.sub(r"\\\n\s*", " ", block.group(2)).splitlines():
            command = without_comment(line.removeprefix("$ ")).strip()
            if command:
                commands.append(command)
    return commands


def without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a word outside quotes (as the shell reads it)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def inline_commands(text: str) -> list[str]:
    """Inline code outside the blocks that starts with a program (`python train.py trainer=gpu ...`)."""
    outside_blocks = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [span for span in re.findall(r"`([^`\n]+)`", outside_blocks) if span.startswith(PROGRAMS)]


def skip_reason(command: str) -> str | None:
    """Why ``command`` is not run here (None: it is)."""
    if len(command.split()) < 3 and command in INLINE:
        return "a program named in prose"
    known = command
    for path in PLACES:
        known = known.replace(path, "")
    if "..." in known or re.search(r"<[^>]+>", known):
        return "a pattern, not one command (its placeholders stand for many values)"
    return next((reason for pattern, reason in SKIPS if reason and re.search(pattern, command)), None)


README = (ROOT / "README.md").read_text()
COMMANDS = readme_commands(README)
INLINE = set(inline_commands(README)) - set(block_commands(README))  # a program's name in prose is no command


@dataclass
class Step:
    """How one README command runs here: its argv and where its training writes."""

    argv: list[str]
    trains: bool = False
    multirun: bool = False


# what a short run sets; a README override of one of these keys gives way to it (a swept one stays)
def short_run(corpus_dir: Path, cache_dir: Path, overrides: list[str]) -> list[str]:
    chosen = {o.split("=", 1)[0] for o in overrides if "=" in o}
    model = ("model.hidden_size=32 model.num_hidden_layers=1 model.num_attention_heads=2 "
             "model.max_position_embeddings=64" if "model" in chosen and "model=hf" in overrides
             else "model.n_layer=1 model.n_head=2 model.n_embd=64 model.block_size=64")  # 64: int4 groups of 64
    data = [] if "data" in chosen else ["data=text_files", f"data.corpus.paths={corpus_dir}"]
    # ddp_spawn on 2 devices: 8 spawned CPU processes per job take minutes on two cores, 2 run the same code
    spawn = ["trainer.devices=2"] if "trainer=ddp_spawn" in overrides else []
    trainer = spawn if "trainer" in chosen else ["trainer=cpu"]
    return [*model.split(), *data, *trainer, "logger=csv", "data.vocab_size=384", "data.block_size=32",
            "data.batch_size=4", f"paths.cache_dir={cache_dir}", "trainer.max_steps=4", "sched.warmup_steps=0.25",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1", "samples.num_prompts=1",
            "samples.max_new_tokens=4", "callbacks.decoding.num_prompts=1", "callbacks.decoding.max_new_tokens=4",
            "callbacks.throughput.decode_tokens=4", "hydra.sweeper.n_trials=2"]


def with_short_run(overrides: list[str], short: list[str], optuna: bool) -> list[str]:
    keys = {o.split("=", 1)[0] for o in short}
    kept = [o for o in overrides if o.split("=", 1)[0] not in keys or "," in o.split("=", 1)[1]]
    kept_keys = {o.split("=", 1)[0] for o in kept}
    return kept + [o for o in short if o.split("=", 1)[0] not in kept_keys
                   and (optuna or not o.startswith("hydra.sweeper."))]


def uses_optuna(overrides: list[str]) -> bool:
    """Whether the sweeper the command selects is Optuna's (read from the sweep file it names)."""
    sweeps = [o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")]
    return any("optuna" in (ROOT / "sweeps" / f"{name}.yaml").read_text() for name in sweeps)


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    """The README's commands are found (blocks and inline), and each is either a program these tests run or a
    listed skip."""
    assert any(c.startswith("python train.py") for c in COMMANDS) and any(c.startswith("lmlab ") for c in COMMANDS)
    unknown = [c for c in COMMANDS if not skip_reason(c) and not re.match(r"(python3? (train|generate)\.py|lmlab)\b",
                                                                        c)]
    assert not unknown, f"README commands no test runs or skips (add a rule to tests/test_readme.py): {unknown}"
    skipped = {c: skip_reason(c) for c in COMMANDS if skip_reason(c)}
    print("\n".join(f"skipped: {c}  ({reason})" for c, reason in skipped.items()))


def job_overrides(overrides: list[str]) -> list[list[str]]:
    """The jobs of a (multirun) command line, as Hydra's basic sweeper splits them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("command", [c for c in COMMANDS if re.match(r"python3? train\.py\b", c) and not
                                     skip_reason(c)])
def test_readme_training_configs_pass_the_checks(command, corpus_dir, cache_dir, tmp_path):
    """Every job of every documented training command composes and passes train.py's config checks (with the
    short-run overrides the slow test appends)."""
    from lmlab.cli.sweep_check import check_train_job

    words = [w for w in shlex.split(command)[2:] if w != "-m"]
    words = [w for w in words if not w.startswith(("hydra.run.dir=", "ckpt_path="))]  # no run to resume here
    overrides = with_short_run(words, short_run(corpus_dir, cache_dir, words), uses_optuna(words))
    try:
        for job in job_overrides([o for o in overrides if not o.startswith("hydra.sweeper.")]):
            check_train_job(compose("train", job, run_dir=tmp_path / "run"))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.startswith("lmlab cost") and not skip_reason(c)])
def test_readme_cost_configs_pass_the_checks(command, tmp_path):
    from lmlab.cli.cost import check_config, parse_args

    args = parse_args(shlex.split(command)[2:])
    try:
        check_config(compose("train", args.overrides, run_dir=tmp_path))
    finally:
        GlobalHydra.instance().clear()


class Readme:
    """The README's commands run in order in one fresh directory: `<run>` is the first run they train, a
    multirun directory the last multirun, and the files they name but do not make exist."""

    def __init__(self, cwd: Path, corpus_dir: Path, cache_dir: Path):
        self.cwd, self.corpus_dir, self.cache_dir = cwd, corpus_dir, cache_dir
        self.made: dict[str, str] = {}
        self.count = 0
        (cwd / "prompts.txt").write_text("def main(\nimport os\n")

    def resolve(self, command: str) -> str:
        for path, made in PLACES.items():
            if path in command:
                assert made in self.made or made.endswith(".safetensors"), f"{command}: no command before made {path}"
                command = command.replace(path, self.made.get(made, made))
        return command

    def step(self, command: str) -> Step:
        words = shlex.split(self.resolve(command))
        program, rest = words[0], words[1:]
        if program == "lmlab":
            argv = [sys.executable, "-c", "import sys; from lmlab.cli.main import main; main(sys.argv[1:])", *rest]
            if rest[0] == "cost":  # gpt_small measured for 1 step of 2 short sequences: seconds, not minutes
                argv += ["--measure-steps", "1", "--decode-tokens", "0", "data.batch_size=2", "data.block_size=32"]
            return Step(argv)
        script, rest = rest[0], rest[1:]
        if script == "generate.py":
            return Step([sys.executable, str(ROOT / script), *rest, "max_new_tokens=4"])
        multirun = "-m" in rest
        overrides = [w for w in rest if w != "-m"]
        short = short_run(self.corpus_dir, self.cache_dir, overrides)
        self.count += 1
        if multirun:
            short.append(f"hydra.sweep.dir={self.cwd / f'multirun_{self.count}'}")
        elif not any(o.startswith("hydra.run.dir=") for o in overrides):
            short.append(f"hydra.run.dir={self.cwd / f'run_{self.count}'}")
        overrides = with_short_run(overrides, short, uses_optuna(overrides))
        return Step([sys.executable, str(ROOT / script), *(["-m"] if multirun else []), *overrides], True, multirun)

    def ran(self, step: Step) -> None:
        """Remember what the step made for the commands after it."""
        if step.trains:
            where = next(w.split("=", 1)[1] for w in step.argv if w.startswith(("hydra.sweep.dir=", "hydra.run.dir=")))
            if step.multirun:
                self.made["multirun"] = where
            else:
                self.made.setdefault("run", where)


@pytest.mark.slow
def test_every_readme_command_runs(corpus_dir, cache_dir, tmp_path):
    """Each README command, in order, as a real process (short-run overrides appended where it trains): exit
    status 0. Skipped ones are printed with their reason."""
    readme = Readme(tmp_path, corpus_dir, cache_dir)
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                                          os.environ.get("PYTHONPATH")]))}
    failed = []
    for command in COMMANDS:
        if reason := skip_reason(command):
            print(f"skipped: {command}  ({reason})")
            continue
        step = readme.step(command)
        try:
            proc = subprocess.run(step.argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        except subprocess.TimeoutExpired as e:
            proc = subprocess.CompletedProcess(step.argv, "timed out", "", f"no exit within {e.timeout} s")
        print(f"exit {proc.returncode}: {command}")
        if proc.returncode != 0:
            failed.append(f"{command}\n  ran: {shlex.join(step.argv)}\n  {proc.stderr.strip()[-1500:]}")
        readme.ran(step)
    assert not failed, "README commands that fail:\n" + "\n".join(failed)
