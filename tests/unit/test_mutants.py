"""The mutation runner's mutants: what is changed, what is left alone, and how
the list of equivalent mutants is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.mutation.mutants import Mutant, mutants, mutated_tree, read_equivalents

SOURCE = '''"""Module docstring."""

LIMIT: int = 20


def decide(count: int, names: list[str], flag: bool) -> str | None:
    """Function docstring."""
    if count > LIMIT and not flag:
        return f"too many: {count - 1}"
    names.append("x")
    return None


class Thing:
    """Class docstring."""

    size: int = Field(default=3, description="left alone")
'''


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "sample.py"
    path.write_text(SOURCE)
    return path


def changes(path: Path) -> list[tuple[str, str, str]]:
    return [(m.qualname, m.before, m.after) for m in mutants(path, "sample.py")]


def test_the_mutants_of_a_module(module: Path) -> None:
    assert changes(module) == [
        ("<module>", "20", "21"),
        ("decide", "if count > LIMIT and (not flag):", "pass"),
        ("decide", "count > LIMIT and (not flag)", "count > LIMIT or not flag"),
        ("decide", "count > LIMIT", "count <= LIMIT"),
        ("decide", "count > LIMIT", "count >= LIMIT"),
        ("decide", "not flag", "flag"),
        ("decide", "return f'too many: {count - 1}'", "pass"),
        ("decide", "count - 1", "count + 1"),
        ("decide", "1", "2"),
        ("decide", "names.append('x')", "pass"),
        ("decide", "'x'", "'XXxXX'"),
        # Left alone: docstrings, annotations, f-string text, description=, the
        # final `return None` (removing it is a no-op).
        ("Thing", "3", "4"),
    ]


def apply(path: Path, mutant: Mutant) -> Any:
    namespace: dict[str, Any] = {"Field": lambda **kw: kw["default"]}
    exec(compile(mutated_tree(path, mutant), str(path), "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("after", "args", "result"), [
    ("count <= LIMIT", (5, [], False), "too many: 4"),
    ("flag", (25, [], True), "too many: 24"),
    ("count + 1", (25, [], False), "too many: 26"),
    ("21", (21, [], False), None),
])
def test_a_mutant_changes_what_the_code_does(module: Path, after: str, args: tuple[Any, ...],
                                             result: str | None) -> None:
    [mutant] = [m for m in mutants(module, "sample.py") if m.after == after]
    assert apply(module, mutant)["decide"](*args) == result


def test_a_removed_statement_is_gone(module: Path) -> None:
    [mutant] = [m for m in mutants(module, "sample.py") if m.before == "names.append('x')"]
    names: list[str] = []
    assert apply(module, mutant)["decide"](1, names, False) is None
    assert names == []


def test_ids_name_the_line_and_count_repeats(tmp_path: Path) -> None:
    path = tmp_path / "twice.py"
    path.write_text("def f(a):\n    return a == 1 or a == 1\n")
    ids = [m.id for m in mutants(path, "twice.py") if m.after == "a != 1"]
    assert ids == ["twice.py | f | return a == 1 or a == 1 | a == 1 -> a != 1",
                   "twice.py | f | return a == 1 or a == 1 | a == 1 -> a != 1 [2]"]
    # Every id is distinct, so an entry in the equivalent list names one mutant.
    every = [m.id for m in mutants(path, "twice.py")]
    assert len(every) == len(set(every))


def test_equivalents_are_read_with_their_reasons(tmp_path: Path) -> None:
    path = tmp_path / "equivalent.txt"
    path.write_text("# comment\n\na | f | x | y -> z\n    because\nb | g | x | y -> z\n    also\n")
    assert read_equivalents(path) == {"a | f | x | y -> z": "because", "b | g | x | y -> z": "also"}


@pytest.mark.parametrize("text", [
    "a | f | x | y -> z\n",                            # no reason
    "a | f | x | y -> z\nb | g | x | y -> z\n    r\n",  # the first has none
    "    a reason without a mutant\n",
    "a | f | x | y -> z\n    one\n    two\n",          # two reasons
])
def test_an_entry_without_exactly_one_reason_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "equivalent.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match="reason"):
        read_equivalents(path)
