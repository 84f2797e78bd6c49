"""The shape of the code: one definition per option, library code that names no config key, an import
picture without circles or upward imports, files a reader can take in."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lmlab
from lmlab.arguments import check_annotations, checkable, parameters
from lmlab.cli import CONF_DIR
from lmlab.errors import ArgumentError
from lmlab.targets import locate

SRC = Path(lmlab.__file__).parent
CONF = Path(CONF_DIR)

# Each unit (a package or a top-level module of lmlab) imports only units of lower layers, also lazily inside
# functions: a circle or an upward import fails here.
LAYERS = [
    {"errors"},
    {"numerics", "atomic", "devices"},
    {"arguments", "targets"},
    {"models"},
    {"spec"},
    {"quantization"},
    {"checkpoint"},
    {"decoding", "losses", "optim", "data", "cost", "loggers"},
    {"compare", "config", "tasks", "coord_check", "export", "scaling"},
    {"report", "callbacks", "checkpoint_io"},
    {"module"},
    {"cli"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
CONFIG_GROUPS = ("model", "data", "task", "loss", "optimizer", "sched", "trainer", "logger", "callbacks",
                 "decoding", "samples", "paths")
KEY_PATH = re.compile(r"(?<![\w./-])(" + "|".join(CONFIG_GROUPS) + r")(\.[a-z_]+)+")


def config_keys() -> set[str]:
    """Every key a user can set: what the shipped config files state, and every parameter of their targets."""
    keys = set()

    def walk(key: str, node) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                keys.update(f"{key}.{name}" for name in parameters(locate(node["_target_"])))
            for name, child in node.items():
                walk(f"{key}.{name}", child)
        keys.add(key)

    for path in CONF.rglob("*.yaml"):
        group = path.parent.name if path.parent != CONF else ""
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if isinstance(node, dict):
            for name, child in node.items():
                walk(f"{group}.{name}".lstrip("."), child)
    return keys


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def lmlab_imports(path: Path) -> set[str]:
    """The lmlab modules a file imports anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("lmlab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("lmlab")}
    return found


def source_files():
    return sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer():
    units = {unit_of(".".join(("lmlab", *f.relative_to(SRC).with_suffix("").parts))) for f in source_files()}
    assert sorted(units - set(LAYER) - {"__init__", ""}) == []


def test_imports_go_down_the_layers_only():
    upward = []
    for path in source_files():
        unit = unit_of(".".join(("lmlab", *path.relative_to(SRC).with_suffix("").parts)))
        for module in lmlab_imports(path):
            target = unit_of(module)
            if target and target != unit and LAYER.get(target, 99) >= LAYER.get(unit, 99):
                upward.append(f"{path.relative_to(SRC)} imports {module}")
    assert upward == []


def docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def recorded_config_reads(tree: ast.AST) -> set[int]:
    """Key paths read from a run's recorded config.yaml (``OmegaConf.select(config, "trainer.max_steps")``): a
    lookup, not a message."""
    return {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "select" for arg in node.args if isinstance(arg, ast.Constant)}


def test_library_code_names_no_config_key():
    """Outside config/ and cli/, errors and messages name parameters; the config layer adds the key path. (A
    dotted name that is no config key, such as a weight's name ``model.norm.weight``, is not one.)"""
    found, keys = [], config_keys()
    for path in source_files():
        if path.relative_to(SRC).parts[0] in ("config", "cli"):
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree) | recorded_config_reads(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                found += [f"{path.relative_to(SRC)}:{node.lineno}: {m.group(0)}" for m in KEY_PATH.finditer(node.value)
                          if m.group(0) in keys]
    assert found == []


def test_the_key_path_check_finds_one():
    tree = ast.parse('raise ValueError(f"optimizer.lr={lr} must be > 0, see data.corpus.paths")')
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    keys = config_keys()
    assert [m.group(0) for s in strings for m in KEY_PATH.finditer(s) if m.group(0) in keys] == [
        "optimizer.lr", "data.corpus.paths"]
    assert "model.norm" in keys and "model.norm.weight" not in keys


def option_nodes():
    """(file, key, node) of every node with a _target_ that a shipped config file states itself."""
    for path in sorted(CONF.rglob("*.yaml")):
        if path.parent.name in ("hydra", "experiment"):
            continue
        text = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        stack = [("", text)]
        while stack:
            key, node = stack.pop()
            if isinstance(node, dict):
                if "_target_" in node:
                    yield pytest.param(path, key, node, id=f"{path.relative_to(CONF)}:{key or '.'}")
                stack += [(f"{key}.{k}".lstrip("."), v) for k, v in node.items() if isinstance(v, dict)]


@pytest.mark.parametrize("path,key,node", option_nodes())
def test_every_conf_option_is_an_argument_of_its_target(path, key, node):
    """A config file states arguments of its target's signature, each a value its annotation allows (an
    interpolation or ??? is checked when the config is composed), and for lmlab's own targets an annotated
    one: the constructor is the one definition of every option, so a yaml value cannot disagree with it."""
    target = locate(node["_target_"])
    params = parameters(target)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    stated = {k: v for k, v in node.items() if not k.startswith("_") and k != "defaults" and not isinstance(v, dict)}
    concrete = {k: v for k, v in stated.items() if not (isinstance(v, str) and ("${" in v or v == "???"))}
    for name in stated:
        assert name in params or takes_any, f"{name} is not an argument of {node['_target_']}"
    for name in concrete:
        if node["_target_"].startswith("lmlab.") and name in params:
            assert checkable(params[name].annotation) is not None, f"{node['_target_']}({name}) is not annotated"
    try:  # the values the file states (with the others, and the rules, when the config is composed)
        check_annotations(target, concrete)
    except ArgumentError as e:
        pytest.fail(f"{path.name}: {e}")


def test_no_source_file_is_longer_than_a_reader_takes_in():
    assert [f"{p.relative_to(SRC)}: {n}" for p in source_files() if (n := len(p.read_text().splitlines())) > 400] == []


def test_train_reads_as_compose_check_build_fit_summarize():
    from lmlab.cli.train import train

    assert len(inspect.getsource(train).splitlines()) <= 60


def test_a_checked_init_taking_kwargs_hands_them_to_its_parent():
    """What lets lmlab.arguments.parameters read a @checked subclass's ``**kwargs`` as its parent's parameters."""
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__" and node.args.kwarg is not None and \
                    any(ast.unparse(d).startswith("checked") for d in node.decorator_list):
                source, kwargs = ast.unparse(node), node.args.kwarg.arg
                assert "super().__init__(" in source and f"**{kwargs})" in source, \
                    f"{path.relative_to(SRC)}: a @checked __init__(**{kwargs}) must pass them to super().__init__"


def cli_imports(path: Path) -> set[str]:
    """The lmlab.cli modules a file imports (``from lmlab import cli`` included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "lmlab":
            found |= {f"lmlab.{alias.name}" for alias in node.names if alias.name == "cli"}
    return found | {m for m in lmlab_imports(path) if m == "lmlab.cli" or m.startswith("lmlab.cli.")}


def test_benchmarks_and_experiments_import_nothing_from_cli():
    """They run `python train.py` as a user does (a subprocess) and build library objects directly, so what
    they measure is what a user gets, and the command-line layer stays free to change."""
    root = SRC.parents[1]
    files = sorted(p for folder in ("benchmarks", "experiments") for p in (root / folder).rglob("*.py"))
    assert files and [f"{p.relative_to(root)}: {sorted(cli_imports(p))}" for p in files if cli_imports(p)] == []


def test_the_cli_import_check_finds_one(tmp_path):
    for line in ("from lmlab.cli import CONF_DIR", "import lmlab.cli.train", "from lmlab import cli"):
        (tmp_path / "bench.py").write_text(f"def f():\n    {line}\n")
        assert cli_imports(tmp_path / "bench.py")
