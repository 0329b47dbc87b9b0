"""Mutants of a Python module, made on its syntax tree.

Each mutant is one small change that a test suite worth its name notices:

- a comparison flipped (``==``/``!=``, ``in``/``not in``, ``is``/``is not``) or moved
  across its boundary (``<`` becomes ``<=`` and ``>=``),
- a ``not`` or a unary minus dropped,
- ``and`` swapped with ``or``, ``+`` with ``-``,
- a constant changed (a number plus one, a boolean negated, a string garbled),
- a statement inside a function removed (except a function's final ``return None``,
  whose removal is a no-op by definition).

Left alone: docstrings, annotations, the literal text of f-strings and
``description=`` arguments, which are messages and documentation rather than
behaviour.

A mutant's ``id`` names it by module, function, source line and change, not by
position, so a list of equivalent mutants survives edits elsewhere in the file.
"""

from __future__ import annotations

import ast
import copy
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_FLIPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Lt: (ast.GtE, ast.LtE),
    ast.LtE: (ast.Gt, ast.Lt),
    ast.Gt: (ast.LtE, ast.GtE),
    ast.GtE: (ast.Lt, ast.Gt),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
}
_BOOL_SWAP: dict[type[ast.boolop], type[ast.boolop]] = {ast.And: ast.Or, ast.Or: ast.And}
_ARITH_SWAP: dict[type[ast.operator], type[ast.operator]] = {ast.Add: ast.Sub, ast.Sub: ast.Add}
_SKIPPED_KEYWORDS = {"description"}

Replace = Callable[[ast.AST], ast.AST]


@dataclass(frozen=True)
class Mutant:
    module: str      # path of the mutated file, relative to the package root
    qualname: str    # the enclosing function or class, "<module>" at top level
    line: int
    source_line: str
    before: str
    after: str
    index: int       # position among the module's mutation points, to apply it
    occurrence: int  # 1 unless the same change appears more than once on one line

    @property
    def id(self) -> str:
        suffix = f" [{self.occurrence}]" if self.occurrence > 1 else ""
        return (f"{self.module} | {self.qualname} | {self.source_line} | "
                f"{self.before} -> {self.after}{suffix}")


@dataclass
class _Point:
    node: ast.AST
    parent: ast.AST
    field: str
    position: int | None
    replace: Replace
    qualname: str


def _is_docstring(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def _is_final_return_none(parent: ast.AST, field: str, position: int | None, stmt: ast.stmt) -> bool:
    """A function's last ``return None``: removing it changes nothing, by definition."""
    return (isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef) and field == "body"
            and position == len(parent.body) - 1 and isinstance(stmt, ast.Return)
            and (stmt.value is None
                 or (isinstance(stmt.value, ast.Constant) and stmt.value.value is None)))


def _with_op(node: ast.Compare, at: int, op: type[ast.cmpop]) -> Replace:
    def replace(_: ast.AST) -> ast.AST:
        new = copy.deepcopy(node)
        new.ops[at] = op()
        return new
    return replace


def _constant(node: ast.Constant) -> Replace | None:
    value = node.value
    new: object
    if isinstance(value, bool):
        new = not value
    elif isinstance(value, int | float):
        new = value + 1
    elif isinstance(value, str):
        new = f"XX{value}XX"
    else:
        return None
    return lambda _: ast.Constant(value=new)


def _replacements(node: ast.AST) -> Iterator[Replace]:
    """The mutants of one expression node, in a fixed order."""
    if isinstance(node, ast.Compare):
        for at, op in enumerate(node.ops):
            for other in _FLIPS.get(type(op), ()):
                yield _with_op(node, at, other)
    elif isinstance(node, ast.BoolOp) and type(node.op) in _BOOL_SWAP:
        swapped = _BOOL_SWAP[type(node.op)]
        yield lambda n: ast.BoolOp(op=swapped(), values=copy.deepcopy(node.values))
    elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH_SWAP:
        arith = _ARITH_SWAP[type(node.op)]
        yield lambda n: ast.BinOp(left=copy.deepcopy(node.left), op=arith(),
                                  right=copy.deepcopy(node.right))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        if not isinstance(node.operand, ast.Constant):  # -1 is a constant, not an operation
            yield lambda n: copy.deepcopy(node.operand)
    elif isinstance(node, ast.Constant) and (replace := _constant(node)) is not None:
        yield replace


class _Collector:
    def __init__(self) -> None:
        self.points: list[_Point] = []

    def visit(self, node: ast.AST, qualname: str, in_function: bool) -> None:
        for field, value in ast.iter_fields(node):
            if field in ("annotation", "returns", "type_comment", "type_params"):
                continue
            if isinstance(node, ast.JoinedStr | ast.FormattedValue) and field in ("values", "format_spec"):
                # Literal text of an f-string is a message; only the values inside are code.
                for part in value if isinstance(value, list) else [value]:
                    if isinstance(part, ast.FormattedValue):
                        self.visit(part, qualname, in_function)
                continue
            if isinstance(value, list):
                for position, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        self._child(node, field, position, child, qualname, in_function)
            elif isinstance(value, ast.AST):
                self._child(node, field, None, value, qualname, in_function)

    def _child(self, parent: ast.AST, field: str, position: int | None, child: ast.AST,
               qualname: str, in_function: bool) -> None:
        if isinstance(child, ast.keyword) and child.arg in _SKIPPED_KEYWORDS:
            return
        if isinstance(child, ast.stmt):
            if position == 0 and _is_docstring(child) and isinstance(
                    parent, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                return
            if isinstance(child, ast.Import | ast.ImportFrom):
                return
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = child.name if qualname == "<module>" else f"{qualname}.{child.name}"
                for decorator in child.decorator_list:
                    self.visit(decorator, qualname, in_function)
                for stmt_field in ("body",):
                    for index, stmt in enumerate(getattr(child, stmt_field)):
                        self._child(child, stmt_field, index, stmt, inner,
                                    not isinstance(child, ast.ClassDef))
                if not isinstance(child, ast.ClassDef):
                    self.visit(child.args, inner, True)
                return
            if in_function and not isinstance(child, ast.Pass | ast.Global | ast.Nonlocal) \
                    and not _is_final_return_none(parent, field, position, child):
                self.points.append(_Point(child, parent, field, position,
                                          lambda _: ast.Pass(), qualname))
        for replace in _replacements(child):
            self.points.append(_Point(child, parent, field, position, replace, qualname))
        self.visit(child, qualname, in_function)


def _points(tree: ast.Module) -> list[_Point]:
    collector = _Collector()
    collector.visit(tree, "<module>", False)
    return collector.points


def _short(node: ast.AST) -> str:
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= 80 else text[:77] + "..."


def mutants(path: Path, module: str) -> list[Mutant]:
    """Every mutant of the file at ``path``, named with ``module`` (its relative path)."""
    source = path.read_text()
    lines = source.splitlines()
    found: list[Mutant] = []
    seen: Counter[tuple[str, str, str, str]] = Counter()
    for index, point in enumerate(_points(ast.parse(source))):
        line = getattr(point.node, "lineno", 0)
        source_line = lines[line - 1].strip() if line else ""
        before = _short(point.node)
        after = _short(point.replace(point.node))
        key = (point.qualname, source_line, before, after)
        seen[key] += 1
        found.append(Mutant(module, point.qualname, line, source_line, before, after,
                            index, seen[key]))
    return found


def mutated_tree(path: Path, mutant: Mutant) -> ast.Module:
    """The syntax tree of the file at ``path`` with ``mutant`` applied."""
    tree = ast.parse(path.read_text())
    point = _points(tree)[mutant.index]
    new = point.replace(point.node)
    ast.copy_location(new, point.node)
    if point.position is None:
        setattr(point.parent, point.field, new)
    else:
        getattr(point.parent, point.field)[point.position] = new
    return ast.fix_missing_locations(tree)


def read_equivalents(path: Path) -> dict[str, str]:
    """The equivalent mutants listed in ``path``: id -> reason.

    Each entry is a mutant's id on one line and its reason on the next, indented;
    lines starting with ``#`` are comments.
    """
    entries: dict[str, str] = {}
    current: str | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0].isspace():
            if current is None or entries[current]:
                raise ValueError(f"{path.name}:{number}: a reason must follow exactly one mutant id")
            entries[current] = raw.strip()
        else:
            if current is not None and not entries[current]:
                raise ValueError(f"{path.name}:{number}: {current!r} has no reason")
            current = raw.rstrip()
            entries[current] = ""
    if current is not None and not entries[current]:
        raise ValueError(f"{path.name}: {current!r} has no reason")
    return entries
