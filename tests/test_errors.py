"""Every exception interlink exports derives from ``InterlinkError`` and stands in the tree
drawn in ``interlink.errors``' docstring, under its real parent."""

from __future__ import annotations

import builtins
import dataclasses
import enum
import importlib
import pickle
import pkgutil
import re
import typing

import interlink
from interlink import errors
from interlink.errors import InterlinkError, _Fields

# One drawn row: tree prefix, a (possibly dotted) class name, then its description.
ROW = re.compile(r"^(?P<prefix>[ │├└─]*?)(?:[├└]── )(?P<name>[A-Za-z_][\w.]*)")


def exported_exceptions(*, modules: bool = False) -> dict[type[BaseException], list[str]]:
    """Every exception class in the ``__all__`` of interlink, of each of its packages and of
    ``interlink.errors`` (with ``modules``: of every public module too), with the
    ``module.Name`` spellings it is exported under."""
    found: dict[type[BaseException], list[str]] = {}
    packages = [interlink.__name__, errors.__name__] + [
        info.name
        for info in pkgutil.walk_packages(interlink.__path__, "interlink.")
        if (info.ispkg or modules)
        and not any(part.startswith("_") for part in info.name.split("."))
    ]
    for name in packages:
        package = importlib.import_module(name)
        for export in getattr(package, "__all__", ()):
            value = getattr(package, export)
            if isinstance(value, type) and issubclass(value, BaseException):
                found.setdefault(value, []).append(f"{name}.{export}")
    return found


def drawn_tree() -> dict[str, str | None]:
    """The docstring's tree: each drawn name mapped to the name drawn as its parent."""
    doc = errors.__doc__ or ""
    parents: dict[str, str | None] = {"InterlinkError": None}
    stack: list[tuple[int, str]] = [(-1, "InterlinkError")]
    for line in doc.splitlines():
        match = ROW.match(line.strip("\n").removeprefix("    "))
        if not match:
            continue
        depth = len(match.group("prefix")) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[match.group("name")] = stack[-1][1]
        stack.append((depth, match.group("name")))
    return parents


def drawn_name(cls: type, spellings: list[str], tree: dict[str, str | None]) -> str | None:
    """How ``cls`` appears in the tree: by class name, or ``subpackage.Name``."""
    candidates = {cls.__name__}
    for spelling in spellings:
        parts = spelling.split(".")
        if len(parts) > 2:
            candidates.add(
                f"{parts[1]}.{parts[-1]}"
            )  # interlink.grpc.x.StatusError: grpc.StatusError
    drawn = [name for name in candidates if name in tree]
    return drawn[0] if drawn else None


EXPORTED = exported_exceptions()
PUBLIC = exported_exceptions(modules=True)
TREE = drawn_tree()


def test_the_walk_finds_the_errors() -> None:
    """The walk sees errors of several packages (an empty walk would pass everything)."""
    modules = {cls.__module__.split(".")[1] for cls in EXPORTED if cls.__module__ != "interlink"}
    assert {"errors", "grpc", "messaging", "saga"} <= modules, modules
    assert len(TREE) >= 15, TREE


def test_every_exported_error_derives_from_interlink_error() -> None:
    """One ``except InterlinkError`` catches every error interlink raises on purpose."""
    strays = sorted(
        spellings[0] for cls, spellings in EXPORTED.items() if not issubclass(cls, InterlinkError)
    )
    assert not strays, f"exported errors outside the InterlinkError tree: {strays}"


def test_every_exported_error_is_drawn_under_its_parent() -> None:
    """The drawing in errors.py is complete and true: each exported error is in it, under the
    nearest drawn class it really derives from."""
    problems = []
    for cls, spellings in EXPORTED.items():
        name = drawn_name(cls, spellings, TREE)
        if name is None:
            problems.append(f"{spellings[0]} is not drawn")
            continue
        parent = TREE[name]
        drawn_bases = [
            base
            for base in cls.__mro__[1:]
            if drawn_name(base, EXPORTED.get(base, []), TREE) is not None
        ]
        real = (
            drawn_name(drawn_bases[0], EXPORTED.get(drawn_bases[0], []), TREE)
            if drawn_bases
            else None
        )
        if parent != real:
            problems.append(f"{name} is drawn under {parent}, but derives from {real}")
    assert not problems, "errors.py's tree is out of date:\n" + "\n".join(sorted(problems))


def test_every_drawn_name_is_exported() -> None:
    """Nothing is drawn that users cannot import from a public module."""
    exported = {drawn_name(cls, spellings, TREE) for cls, spellings in PUBLIC.items()}
    assert not set(TREE) - exported - {None}, sorted(set(TREE) - exported)


def test_drawn_builtin_bases_are_true_and_complete() -> None:
    """``[TimeoutError]`` after a row means the error is also that built-in, and every
    exported error that is also a built-in error says so."""
    doc = errors.__doc__ or ""
    said = {
        match.group("name"): set(re.findall(r"\[(\w+)\]\s*$", line))
        for line in doc.splitlines()
        if (match := ROW.match(line.removeprefix("    ")))
    }
    problems = []
    for cls, spellings in EXPORTED.items():
        name = drawn_name(cls, spellings, TREE)
        if name is None:
            continue  # reported by the test above
        extra = {
            base.__name__
            for base in cls.__mro__
            if base.__module__ == "builtins" and base not in (BaseException, Exception, object)
        }
        inherited = {
            base.__name__
            for parent in cls.__mro__[1:]
            if parent in EXPORTED
            for base in parent.__mro__
            if base.__module__ == "builtins"
        }
        for claimed in said.get(name, set()):
            if not issubclass(cls, getattr(builtins, claimed)):
                problems.append(f"{name} is drawn as a {claimed} but is not one")
        if (missing := extra - inherited - said.get(name, set())) and not any(
            issubclass(getattr(builtins, c), getattr(builtins, m))
            for c in said.get(name, set())
            for m in missing
        ):
            problems.append(f"{name} is also {sorted(missing)}: draw it in brackets")
    assert not problems, "\n".join(sorted(problems))


def _sample(name: str, hint: object) -> object:
    """A value of the type ``hint`` for a field called ``name``: a number, an enum's first
    member, or else the name itself."""
    kinds = {hint, *typing.get_args(hint)}
    enums = [k for k in kinds if isinstance(k, type) and issubclass(k, enum.Enum)]
    if float in kinds:
        return 1.5
    if int in kinds:
        return 2
    return next(iter(enums[0])) if enums else name


def test_errors_of_named_fields_keep_them_as_args() -> None:
    """An error of named fields builds by position or keyword alike, keeps its fields as
    ``args`` and pickles back to the same message."""
    made: list[typing.Any] = [
        cls for cls in PUBLIC if issubclass(cls, _Fields) and dataclasses.is_dataclass(cls)
    ]
    assert len(made) >= 8, made
    for cls in made:
        hints = typing.get_type_hints(cls)
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            values[field.name] = _sample(field.name, hints[field.name])
        by_keyword, by_position = cls(**values), cls(*values.values())
        assert by_keyword.args == by_position.args == tuple(values.values()), cls
        assert str(by_keyword) == str(by_position) == str(pickle.loads(pickle.dumps(by_keyword)))
        assert all(getattr(by_keyword, name) == value for name, value in values.items()), cls
