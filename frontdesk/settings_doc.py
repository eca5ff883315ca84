"""The configuration reference of README.md, generated from the settings classes.

:func:`render` finds every :class:`~frontdesk.settings.ComponentSettings` subclass of the Frontdesk
packages (it imports each module whose source defines one, so a new section or field appears
without touching this module) and returns one Markdown table per section, sorted by section:
environment variable, YAML key, type, default, description. Secrets show as ``secret``, never a
value. Defaults that depend on the machine (paths in the checkout or the home directory) are shown
relative, so the text is the same on every machine.

:func:`settings_classes` is also what :func:`frontdesk.settings.known_sections` asks for the
top-level sections a YAML file may have.

README.md holds the text between ``<!-- settings:begin -->`` and ``<!-- settings:end -->``;
``make docs`` (``frontdesk config-reference --write``) rewrites that block, and a unit test fails
when it has drifted. Pure apart from the imports and :func:`write_readme`; no environment is read.
"""

from __future__ import annotations

import importlib
import re
import types
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from frontdesk.settings import ComponentSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGES = ("frontdesk", "ingest", "classify", "dispatch")
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
REGENERATE = "make docs"
_DEFINES = re.compile(r"^class \w+\([^)]*\bComponentSettings\b[^)]*\):", re.MULTILINE)
_BOUNDS = ((Ge, "ge", "≥"), (Gt, "gt", ">"), (Le, "le", "≤"), (Lt, "lt", "<"))
INTRO = """\
<!-- generated from the settings classes by `make docs` (frontdesk config-reference --write); edit the classes, not this -->
List-valued settings are JSON arrays in environment variables (e.g.
`FRONTDESK_CLASSIFIER_LANGUAGES='["az","ru"]'`); lists of mappings (`imap.mailboxes`) are easier in
the YAML file. A `secret` is a `SecretStr`: never printed, logged or put into an error message."""


def settings_classes() -> list[type[ComponentSettings]]:
    """Every settings class with a section in the Frontdesk packages, sorted by section."""
    for module in _defining_modules():
        importlib.import_module(module)
    found: set[type[ComponentSettings]] = set()
    todo = list(ComponentSettings.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.section and cls.__module__.split(".")[0] in PACKAGES:
            found.add(cls)
    return sorted(found, key=lambda c: (c.section, c.__name__))


def _defining_modules() -> list[str]:
    modules = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _DEFINES.search(path.read_text(encoding="utf-8")):
                parts = path.relative_to(ROOT).with_suffix("").parts
                modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def render() -> str:
    """The whole block between the markers (without them), ending with a newline."""
    chunks = [INTRO]
    for cls in settings_classes():
        chunks.append(_section(cls))
    return "\n\n".join(chunks) + "\n"


def _section(cls: type[ComponentSettings]) -> str:
    doc = prose(cls.__dict__.get("__doc__") or "")
    lines = [f"### `{cls.section}`", ""] + ([doc, ""] if doc else [])
    lines += ["| Env var | YAML key | Type | Default | Description |", "|---|---|---|---|---|"]
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, info in cls.model_fields.items():
        env = f"`FRONTDESK_{cls.section.upper()}_{name.upper()}`"
        lines.append(_row(env, f"{cls.section}.{name}", info))
        if (model := _item_model(info.annotation)) is not None:
            nested.append((f"{cls.section}.{name}", model))
    for key, model in nested:
        lines += ["", f"Each entry of `{key}`:", "", "| Env var | YAML key | Type | Default | Description |",
                  "|---|---|---|---|---|"]
        lines += [_row("(in the JSON list)", f"{key}[].{name}", info) for name, info in model.model_fields.items()]
    return "\n".join(lines)


def _row(env: str, key: str, info: FieldInfo) -> str:
    cells = [env, f"`{key}`", type_text(info.annotation, info.metadata), default_text(info),
             prose(info.description or "")]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def prose(text: str) -> str:
    """Docstring/description text as one Markdown line: RST ``code`` to `code`, no stray HTML or emphasis."""
    text = " ".join(text.split()).replace("``", "`")
    return text.replace("<", "\\<").replace("*", "\\*")


def _item_model(annotation: Any) -> type[BaseModel] | None:
    args = [a for a in get_args(annotation) if a is not Ellipsis]
    if get_origin(annotation) in (tuple, list) and len(args) == 1 and _is_model(args[0]):
        return args[0]  # type: ignore[no-any-return]
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel) and not issubclass(tp, SecretStr)


def type_text(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> str:
    """A reader's name for a field type: `int` ≥ 1, `a` | `b`, list of `str`, secret."""
    bounds = [f"{sign} {getattr(m, attr)}" for m in metadata for cls, attr, sign in _BOUNDS if isinstance(m, cls)]
    return _type_name(annotation) + (" (" + ", ".join(bounds) + ")" if bounds else "")


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (tuple, list, set, frozenset):
        items = [a for a in args if a is not Ellipsis]
        return "list of " + (_type_name(items[0]) if len(items) == 1 else "values")
    if tp is SecretStr:
        return "secret"
    if _is_model(tp):
        return f"`{tp.__name__.removesuffix('Settings').lower()}` mappings (below)"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return " | ".join(f"`{m.value}`" for m in tp)
    names = {Path: "path", date: "date", datetime: "datetime"}
    return f"`{names.get(tp, getattr(tp, '__name__', str(tp)))}`"


def default_text(info: FieldInfo) -> str:
    """The default as a reader would write it: `true`, `var`, `config/routing.yaml`, unset, required."""
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(set)"
    if isinstance(value, (tuple, list, set, frozenset)):
        return ", ".join(_literal(v) for v in value) if value else "none"
    return _literal(value)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{_portable(value)}`"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{value}`"


def _portable(path: Path) -> str:
    for base, shown in ((ROOT, ""), (Path.home(), "~/")):
        if path.is_absolute() and path.is_relative_to(base):
            return shown + path.relative_to(base).as_posix()
    return path.as_posix()


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``. Raises ValueError."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} … {END} block")
    return text[: start + len(BEGIN)] + "\n" + block + text[end:]


def readme_block(text: str) -> str:
    """What README currently holds between the markers. Raises ValueError."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} … {END} block")
    return text[start + len(BEGIN) + 1 : end]


def write_readme(path: Path = README) -> bool:
    """Rewrite the block in ``path``; returns whether anything changed."""
    old = path.read_text(encoding="utf-8")
    new = replace_block(old, render())
    if new != old:
        path.write_text(new, encoding="utf-8")
    return new != old
