"""Config checks that run before anything is built: each node against its ``_target_``'s own signature and
rules (:mod:`lmlab.config.nodes`), the rules that join groups (:mod:`lmlab.config.rules`), and the bounds on
what a run may ask of the machine (:mod:`lmlab.config.resources`). Options themselves are defined by the
constructors that take them (:mod:`lmlab.arguments`)."""

from lmlab.config.nodes import check_group
from lmlab.config.rules import check_generate_config, check_train_config

__all__ = ["check_train_config", "check_generate_config", "check_group"]
