"""Library messages a user of lmlab cannot act on, silenced one by one: each by its text and its origin,
so that any other warning from the same library still shows."""

from __future__ import annotations

import logging
import re
import warnings

# (message regex, category, module regex) of Python warnings, and why each is not the user's to act on
WARNINGS = (
    # Lightning's own pytree helper still builds torch's deprecated LeafSpec, on every run
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\.utilities\._pytree"),
    # lmlab's sampler resumes mid-epoch itself (lmlab.data.sampler); Lightning cannot know that
    (r"You're resuming from a checkpoint that ended before the epoch ended", UserWarning,
     r"lightning\.pytorch\.loops\.training_epoch_loop"),
)
# resuming in place (ckpt_path=last/auto) finds the run's own checkpoints in its checkpoint folder
RESUME_WARNINGS = (
    (r"Checkpoint directory .* exists and is not empty", UserWarning,
     r"lightning\.pytorch\.callbacks\.model_checkpoint"),
)
# (logger name, message regex) of log records, and why each is not the user's to act on
LOG_RECORDS = (
    # the advertisements a Trainer prints (cloud logging, and cloud uploads when Lightning adds its own
    # ModelCheckpoint)
    ("lightning.pytorch.utilities.rank_zero", r"💡 Tip: For seamless cloud "),
    # Lightning's dump_checkpoint(weights_only=None) when lmlab saves last.ckpt on Ctrl-C/SIGTERM
    # (callbacks/interrupt.py) or on a halt (callbacks/stability.py): its weights_only means "save only the
    # weights", and False (the full training state: optimizer, schedule, data position) is what a resume needs.
    # Loading is another matter: every checkpoint lmlab reads goes through torch.load(weights_only=True).
    ("lightning.pytorch.trainer.connectors.checkpoint_connector", r"`weights_only` was not set, defaulting to"),
    # a Hugging Face config's default bos/eos/pad ids (GPT2Config: 50256) outside a vocabulary lmlab trained:
    # lmlab never reads them, decoding takes EOS and padding from the run's tokenizer (other special ids'
    # warnings still show)
    ("transformers.configuration_utils", r"Model config: (bos|eos|pad)_token_id must be `None` or an integer "
                                         r"within the vocabulary"),
)


class _DropMessage(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def silence_library_noise(resuming: bool = False) -> None:
    """Install the filters above (idempotent); `resuming` adds those that only hold for a resumed run."""
    for message, category, module in WARNINGS + (RESUME_WARNINGS if resuming else ()):
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, pattern in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))
