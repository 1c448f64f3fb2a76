"""Load a run config from YAML, apply ``key=value`` overrides, validate, write it out.

Errors are ``ValueError`` naming the field, the bad value and what was expected, e.g.
``config field loss.eps_low: got -0.1, expected `float` >= 0.0``. YAML that does not parse, a
key given twice in one mapping and a number that is not finite (``.inf``, ``.nan``) are refused
the same way, with the line or the field.
"""

from __future__ import annotations

import copy
import math
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import msgspec
import yaml

from dynamo_async.config.schema import RunConfig
from dynamo_async.errors import UsageError
from dynamo_async.objective.presets import expand
from dynamo_async.objective.registry import STAGES
from dynamo_async.objective.settings import check_read, unread_keys

_TOKEN_RE = re.compile(r"\.(\w+)|\[(\d+)\]")
# Fields renamed since an earlier release: the old key's error says what it became.
RENAMED = {
    "model.dtype": "model.compute_dtype (the learner always keeps float32 master weights and computes in this dtype)",
    "baselines.clip_cov_eps": "loss.eps_low and loss.eps_high (the clip_cov preset sets both to 1.0)",
}
# Keys that moved when the baselines became objective components: still read, under the new name.
ALIASES = {
    "baselines.clip_higher_eps_high": "loss.eps_high",
    "baselines.entropy_coef": "objective.entropy_bonus.coef",
    "baselines.fork_top_ratio": "objective.fork_tokens.top_ratio",
    "baselines.entropy_adv_alpha": "objective.entropy_advantage.alpha",
    "baselines.entropy_adv_kappa": "objective.entropy_advantage.kappa",
    "baselines.clip_cov_ratio": "objective.clip_cov.ratio",
    "baselines.clip_cov_lb": "objective.clip_cov.lb",
    "baselines.clip_cov_ub": "objective.clip_cov.ub",
    "baselines.kl_cov_ratio": "objective.kl_cov.ratio",
    "baselines.kl_cov_coef": "objective.kl_cov.coef",
    "baselines.w_reinforce_positive": "objective.w_reinforce.positive",
}


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one YAML mapping (PyYAML would keep the last one silently)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-6`` is a float, as a user types it (plain
    PyYAML needs ``1.0e-6``; it reads ``1e-6`` as a string), and that a key given twice in one
    mapping is an error (``DuplicateKeyError``): which of the two the user meant is unknown."""

    def construct_mapping(self, node, deep=False):
        """The mapping of ``node``; its own keys checked to be distinct (merged ``<<`` keys may
        be overridden, as YAML allows)."""
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in first:
                problem = f"duplicate key {key!r} (first at line {first[key] + 1})"
                raise DuplicateKeyError(None, None, problem, key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


class _Dumper(yaml.SafeDumper):
    """Quotes the strings that ``_Loader`` would read as numbers (``"1e6"``), so that a dumped
    config reads back equal."""


_EXP_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$""")
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))


def parse_yaml(text: str):
    """YAML text as Python values (safe; ``1e-6`` is a float; a duplicated key is an error)."""
    return yaml.load(text, Loader=_Loader)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong with some YAML and where, e.g. "mapping values are not allowed here at
    line 3, column 8"."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return str(err)
    mark = err.problem_mark
    return f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}"


def _read_yaml_file(path: Path):
    """The YAML of the config file ``path``; YAML that does not parse, or a key given twice, is a
    ``UsageError`` naming the line."""
    try:
        return parse_yaml(path.read_text())
    except DuplicateKeyError as err:
        raise UsageError(
            f"config file {path}: got a {_yaml_problem(err)}, expected each key once; remove one"
        ) from None
    except yaml.YAMLError as err:
        what = f"YAML that does not parse ({_yaml_problem(err)}), expected valid YAML"
        raise UsageError(f"config file {path}: got {what}; fix that line (indentation, colons, quotes)") from None


_PATH_RE = re.compile(r"^(?P<msg>.*) - at `\$(?P<path>[^`]*)`$")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read YAML at ``path`` (or start empty), apply ``overrides``, return the validated config."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"config file: got {str(path)!r}, expected an existing YAML file")
        loaded = _read_yaml_file(path)
        if loaded is not None and not isinstance(loaded, dict):
            raise UsageError(f"config file {path}: got a {type(loaded).__name__}, expected a mapping")
        raw = loaded or {}
    from_file = set(_leaf_keys(_moved(raw)))
    for item in overrides:
        apply_override(raw, item)
    keys = [ALIASES.get(k, k) for k in (item.partition("=")[0].strip() for item in overrides)]
    # A method (or component) picked on the command line over a config file's own: the file's
    # settings for what is no longer used are ignored with a warning, not an error.
    switched = any(k in _SELECTION for k in keys)
    return config_from_dict(raw, from_file - set(keys) if switched else set())


# Keys that choose which components run (and so which settings are read).
_SELECTION = {"method", "allocation.dynamic", *(f"objective.{stage}" for stage in STAGES)}


def config_from_dict(raw: dict[str, Any], relaxed: set[str] = frozenset()) -> RunConfig:
    """Validate a plain mapping into a ``RunConfig``: old key names moved to their new ones, the
    method's preset put under it (objective/presets.py), and every key set checked to be read by
    the run (objective/settings.py; a key of ``relaxed`` that is not read only warns). A bad
    value is a ``UsageError`` naming it."""
    moved = _moved(raw)
    full = expand(moved)
    _check_finite(full)
    try:
        cfg = msgspec.convert(full, RunConfig)
    except msgspec.ValidationError as err:
        raise UsageError(_explain(str(err), full)) from None
    # Keys under an old name keep their old meaning: the shared ``baselines`` section was read
    # only by its own baseline, so they are not checked (a FutureWarning names the new key).
    old_names = [k for k in _leaf_keys(raw) if k in ALIASES]
    for old in old_names:
        warnings.warn(f"config key {old} is now {ALIASES[old]}", FutureWarning, stacklevel=3)
    legacy = {ALIASES[k] for k in old_names}
    keys = [k for k in _leaf_keys(moved) if k not in legacy]
    for key in unread_keys(cfg, [k for k in keys if k in relaxed]):
        warnings.warn(
            f"config file key {key} is not read by the method or components chosen on the command line; "
            "ignored (it is left out of the resolved config)",
            UserWarning,
            stacklevel=3,
        )
    check_read(cfg, [k for k in keys if k not in relaxed])
    return cfg


def _check_finite(tree: Any, where: str = "") -> None:
    """Refuse ``.inf`` and ``.nan`` in every field: no setting means them, and bounds let them
    through (``.inf`` is ``> 0``, so an infinite timeout would pass and never fire)."""
    if isinstance(tree, float) and not math.isfinite(tree):
        raise UsageError(f"config field {where}: got {tree}, expected a finite number")
    if isinstance(tree, dict):
        for key, value in tree.items():
            _check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _check_finite(value, f"{where}[{i}]")


def _leaf_keys(raw: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            out.extend(_leaf_keys(value, f"{prefix}{key}."))
        else:
            out.append(prefix + key)
    return out


def _moved(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the keys of ``ALIASES`` under their new names (a copy; ``raw`` is untouched)."""
    out = copy.deepcopy(raw)
    for old, new in ALIASES.items():
        section, _, leaf = old.partition(".")
        node = out.get(section)
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        if not node:
            out.pop(section)
        target = out
        *parents, last = new.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return out


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in ``raw``; the value is parsed as YAML (numbers, bools, lists)."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UsageError(f"override: got {item!r}, expected key=value such as loss.eps_high=0.28")
    parts = key.strip().split(".")
    if key.strip() not in ALIASES:  # an old name is moved by config_from_dict
        _check_key(parts)
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UsageError(f"override {item!r}: {part} is a value, expected a section")
        node = child
    try:
        node[parts[-1]] = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise UsageError(
            f"override {item!r}: got a value that does not parse as YAML ({_yaml_problem(err)}), expected "
            "a value such as 0.28, true or [1, 2]; quote a text that holds YAML punctuation"
        ) from None


def dump_config(cfg: RunConfig, path: str | Path) -> Path:
    """Write the resolved config (every field, defaults included) as YAML; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_yaml(cfg))
    return path


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML text that ``load_config`` reads back to an equal config: every
    field the run reads, the method's expansion included; settings of unused components left out."""
    tree = msgspec.to_builtins(cfg)
    for key in unread_keys(cfg, _leaf_keys(tree)):
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node[part]
        del node[leaf]
    for section in (tree, tree["objective"]):
        for name in [n for n, v in section.items() if v == {}]:
            del section[name]
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field, for ``config --describe``."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls, include_extras=True)
    for field in msgspec.structs.fields(cls):
        key = prefix + field.name
        inner, doc = _unwrap(hints[field.name])
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            rows.extend(describe_fields(inner, key + "."))
            continue
        default = "(required)" if field.required else repr(field.default)
        rows.append((key, default, doc))
    return rows


def _unwrap(hint: Any) -> tuple[Any, str]:
    doc = ""
    while typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        for m in meta:
            if isinstance(m, msgspec.Meta) and m.description:
                doc = doc or m.description
    return hint, doc


def _check_key(parts: list[str]) -> None:
    if ".".join(parts) in RENAMED:
        raise UsageError(f"override key {'.'.join(parts)!r}: renamed to {RENAMED['.'.join(parts)]}")
    cls: Any = RunConfig
    for i, part in enumerate(parts):
        names = {f.name: f for f in msgspec.structs.fields(cls)}
        if ".".join(parts[: i + 1]) in RENAMED:
            raise UsageError(f"override key {'.'.join(parts)!r}: renamed to {RENAMED['.'.join(parts[: i + 1])]}")
        if part not in names:
            where = ".".join(parts[:i]) or "the top level"
            raise UsageError(
                f"override key {'.'.join(parts)!r}: got {part!r} in {where}, expected one of {sorted(names)}"
            )
        inner, _ = _unwrap(typing.get_type_hints(cls, include_extras=True)[part])
        is_section = isinstance(inner, type) and issubclass(inner, msgspec.Struct)
        if i < len(parts) - 1 and not is_section:
            raise UsageError(f"override key {'.'.join(parts)!r}: {part} is a value, expected a section")
        cls = inner


def _explain(message: str, raw: dict[str, Any]) -> str:
    match = _PATH_RE.match(message)
    if not match:
        match = _PATH_RE.match(message + " - at `$`")
    assert match is not None, message
    msg, path = match.group("msg"), match.group("path")
    tokens = _TOKEN_RE.findall(path)
    keys = [name for name, _ in tokens if name]
    value: Any = raw
    for name, index in tokens:
        if name:
            value = value.get(name) if isinstance(value, dict) else None
        else:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
    field = path.lstrip(".") or "(top level)"
    if msg.startswith("Object contains unknown field"):
        name = msg.split("`")[1]
        if ".".join(keys + [name]) in RENAMED:
            return f"config field {'.'.join(keys + [name])}: renamed to {RENAMED['.'.join(keys + [name])]}"
        section = _section(keys)
        valid = sorted(f.name for f in msgspec.structs.fields(section))
        return f"config field {'.'.join(keys + [name])}: got an unknown key, expected one of {valid}"
    if msg.startswith("got "):
        return f"config field {field}: {msg}"
    expected = msg.removeprefix("Expected ").split(", got")[0]
    if "float" in expected and str(value).lower().lstrip("+-") in ("inf", "infinity", "nan"):  # override x=inf
        return f"config field {field}: got {value}, expected a finite number"
    if msg.startswith("Invalid enum value"):
        expected = "one of " + _choices(keys)
    if msg.startswith("Object missing required field"):
        name = msg.split("`")[1]
        full = ".".join(keys + [name])
        return f"config field {full}: got nothing, expected a value (it has no default)"
    return f"config field {field}: got {value!r}, expected {expected}"


def _section(keys: list[str]) -> Any:
    cls: Any = RunConfig
    for k in keys:
        cls, _ = _unwrap(typing.get_type_hints(cls, include_extras=True)[k])
    return cls


def _choices(keys: list[str]) -> str:
    cls: Any = RunConfig
    hint: Any = None
    for k in keys:
        hint, _ = _unwrap(typing.get_type_hints(cls, include_extras=True)[k])
        cls = hint
    args = [a for a in typing.get_args(hint)] if hint is not None else []
    return repr(args) if args else "the documented values"
