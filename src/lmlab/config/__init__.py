"""Config checks that run before anything is built: typed schemas chosen by ``_target_``, the rules that join
groups, and the bounds on what a run may ask of the machine."""

from lmlab.config.run import check_generate_config, check_group, check_train_config

__all__ = ["check_train_config", "check_generate_config", "check_group"]
