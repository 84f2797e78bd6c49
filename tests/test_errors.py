"""Bad input fails before any work starts, with a message naming the field."""


import pytest
from hydra.errors import InstantiationException

from lmlab.cli.train import train
from lmlab.loggers import resolve_wandb_mode


@pytest.mark.parametrize("overrides,error", [
    (["optimizer.lr=0"], r"optimizer.lr=0.* must be > 0"),
    (["optimizer.lr=-1e-3"], r"optimizer.lr=-0.001 must be > 0"),
    (["sched.warmup_steps=50", "trainer.max_steps=20"], r"sched.warmup_steps=50 is longer than the run"),
    (["sched=constant", "sched.warmup_steps=50", "trainer.max_steps=20"], r"sched.warmup_steps=50 is longer"),
    (["data.block_size=128", "model.block_size=64"], r"data.block_size=128 is larger than the model's context"),
    (["trainer.max_steps=0"], r"trainer.max_steps=0 must be a positive"),
    (["ckpt_path=/nonexistent/last.ckpt"], r"ckpt_path=/nonexistent/last.ckpt: .* does not exist"),
    (["ckpt_path=last"], r"ckpt_path=last: .*checkpoints/last.ckpt does not exist .*hydra.run.dir"),
    (["data.batch_size=0"], r"data.batch_size=0 must be a positive integer"),
    (["model.norm=batchnorm"], r"model.norm='batchnorm'; allowed: layernorm, rmsnorm"),
    (["model.activation=swish"], r"model.activation='swish'; allowed: relu, gelu"),
    (["logger=wandb", "logger.wandb.mode=cloud"], r"logger.wandb.mode='cloud'; allowed: auto, online, offline"),
])
def test_bad_training_input_is_named_before_work_starts(make_cfg, overrides, error, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError, InstantiationException), match=error):
        train(make_cfg(*overrides))
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_missing_data_path_is_named(make_cfg, tmp_path):
    with pytest.raises(InstantiationException, match="data.corpus.paths"):
        train(make_cfg(f"data.corpus.paths={tmp_path / 'no_such_folder'}"))


def test_empty_data_folder_is_named(make_cfg, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InstantiationException, match="data.corpus.paths"):
        train(make_cfg(f"data.corpus.paths={empty}"))


def test_corpus_too_small_for_one_validation_batch(make_cfg, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.py").write_text("def f():\n    return 1\n" * 40)
    (small / "b.py").write_text("x = [i * i for i in range(10)]\n" * 40)
    with pytest.raises(ValueError, match=r"data: the (validation|training) split has \d+ tokens"):
        train(make_cfg(f"data.corpus.paths={small}", "data.batch_size=64"))


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


def test_strategy_ddp_is_refused_inside_a_multirun(make_cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    cfg = make_cfg("trainer=ddp")
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(ValueError, match="use trainer=ddp_spawn in sweeps"):
        train(cfg)


