"""The top-level `sweeps/` folder as Hydra config groups: `sweep=<name>` is `sweeps/<name>.yaml`,
`hydra/launcher=<name>` may also be `sweeps/slurm/<name>.yaml` (cluster settings for submitit).

A plain `file://` search path would expose sweeps/ under the group name `sweeps` and every
sub-folder as a group of its own; this source serves exactly the two groups above. conf/train.yaml
names it in `hydra.searchpath` as `lmlab://sweeps`, a path relative to the repository root.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.object_type import ObjectType
from hydra.core.plugins import Plugins
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

from lmlab.cli import REPO_ROOT

# config group -> its folder under sweeps/ ("" is sweeps/ itself)
GROUP_FOLDERS = {"sweep": "", "hydra/launcher": "slurm"}


class SweepsConfigSource(ConfigSource):
    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.root = REPO_ROOT / self.path

    @staticmethod
    def scheme() -> str:
        return "lmlab"

    def _file(self, config_path: str) -> Path | None:
        """The YAML file for `<group>/<name>` of a served group, or None."""
        group, _, name = config_path.strip("/").removesuffix(".yaml").rpartition("/")
        if group not in GROUP_FOLDERS or not name:
            return None
        return self.root / GROUP_FOLDERS[group] / f"{name}.yaml"

    def load_config(self, config_path: str) -> ConfigResult:
        file = self._file(config_path)
        if file is None or not file.is_file():
            raise ConfigLoadError(f"Config not found: {config_path} (in {self.root})")
        text = file.read_text(encoding="utf-8")
        return ConfigResult(config=OmegaConf.create(text) if text.strip() else OmegaConf.create(),
                            path=f"{self.scheme()}://{self.path}", provider=self.provider,
                            header=ConfigSource._get_header_dict(text[:512]))

    def available(self) -> bool:
        return self.root.is_dir()

    def is_group(self, config_path: str) -> bool:
        path = config_path.strip("/")
        return path == "" or any(group == path or group.startswith(path + "/") for group in GROUP_FOLDERS)

    def is_config(self, config_path: str) -> bool:
        file = self._file(config_path)
        return file is not None and file.is_file()

    def list(self, config_path: str, results_filter: ObjectType | None) -> list[str]:
        path = config_path.strip("/")
        prefix = path + "/" if path else ""
        found = set()
        if results_filter in (None, ObjectType.GROUP):
            found |= {group[len(prefix):].split("/")[0] for group in GROUP_FOLDERS
                      if group.startswith(prefix) and group != path}
        if results_filter in (None, ObjectType.CONFIG) and path in GROUP_FOLDERS:
            found |= {f.stem for f in (self.root / GROUP_FOLDERS[path]).glob("*.yaml")}
        return sorted(found)

Plugins.instance().register(SweepsConfigSource)
