"""``requirements-runtime.lock`` (``image/lock.py``): the runtime part of
``requirements.lock``, with its versions and hashes."""

from __future__ import annotations

from image import lock

# --- the runtime lock -------------------------------------------------------------------


def test_the_runtime_lock_is_the_runtime_part_of_the_development_lock() -> None:
    expected = lock.runtime_lock(lock.DEV_LOCK.read_text(), lock.runtime_names())
    assert lock.RUNTIME_LOCK.read_text() == expected, \
        "requirements-runtime.lock is stale: run `make lock`"


def test_the_runtime_set_leaves_the_development_tools_out() -> None:
    names = lock.runtime_names()
    assert {"kopf", "kubernetes", "pydantic", "aiohttp"} <= names
    assert not names & {"pytest", "mypy", "ruff", "hypothesis", "import-linter", "cryptography"}


def test_lock_entries_keep_versions_and_hashes_and_drop_comments() -> None:
    text = ("# header\nfoo-bar==1.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
            "    # via\n    #   x\nbaz==2 \\\n    --hash=sha256:cc\n    # via foo-bar\n")
    assert lock.entries(text) == {
        "foo-bar": "foo-bar==1.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb",
        "baz": "baz==2 \\\n    --hash=sha256:cc"}


