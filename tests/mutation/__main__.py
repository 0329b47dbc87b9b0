"""Mutation testing of the pure modules: ``python -m tests.mutation [MODULE ...]``.

Every mutant (see ``mutants.py``) is run against the module's unit tests in a
forked process: the libraries are imported once, before forking, and the child
imports Firebreak afresh with the mutated module served by an import hook, so
every other module sees the mutant too. The child stops at the first failing
test (``-x``) and is killed after a timeout. A mutant is *killed* when a test
fails, the module no longer imports, or the timeout hits; otherwise it
*survived*.

Survivors that change no behaviour are listed in ``equivalent.txt`` with a
reason; they are shown as excluded in the report, never silently dropped. The
score of a module is killed / (mutants - equivalent).

Writes ``mutation-report/report.json`` and ``mutation-report/survivors.txt``.
Exits non-zero when a module scores under ``--fail-under``, or when
``equivalent.txt`` names a mutant that no longer exists.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType

from .mutants import Mutant, mutants, mutated_tree, read_equivalents

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "operator" / "firebreak"
HERE = Path(__file__).resolve().parent
EQUIVALENTS = HERE / "equivalent.txt"
REPORT = REPO / "mutation-report"

_SOURCE_TESTS = ("tests/unit/test_signal.py", "tests/unit/test_signal_bounds.py",
                 "tests/unit/test_signal_limits.py", "tests/unit/test_sources.py")

# Each pure module and the unit tests that speak for it.
MODULES: dict[str, tuple[str, ...]] = {
    "budget.py": ("tests/unit/test_budget.py",),
    "conditions.py": ("tests/unit/test_conditions.py",),
    "guardrails.py": ("tests/unit/test_guardrails.py",),
    "isolation.py": ("tests/unit/test_isolation.py",),
    "evidence.py": ("tests/unit/test_evidence.py",),
    "matching.py": ("tests/unit/test_matching.py",),
    "notifications.py": ("tests/unit/test_notifications.py",),
    "planning.py": ("tests/unit/test_planning.py",),
    "selectors.py": ("tests/unit/test_selectors.py", "tests/unit/test_matching.py"),
    "sources/alertmanager.py": _SOURCE_TESTS,
    "sources/external.py": _SOURCE_TESTS,
    "sources/falco.py": _SOURCE_TESTS,
    "sources/prometheus.py": _SOURCE_TESTS,
    "sources/signal.py": _SOURCE_TESTS,
    "sources/trivy.py": _SOURCE_TESTS,
    "views.py": ("tests/unit/test_views.py",),
}

# Imported once by the parent so that each child only re-imports Firebreak and the tests.
_PRELOAD = ("pytest", "pydantic", "yaml", "kubernetes", "_pytest.python", "pytest_asyncio",
            "pytest_timeout")
_OURS = ("firebreak", "tests")

KILLED, TIMEOUT, SURVIVED, EQUIVALENT = "killed", "timeout", "survived", "equivalent"


def module_name(relative: str) -> str:
    return "firebreak." + relative.removesuffix(".py").replace("/", ".")


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves one module's mutated code under its real name and file."""

    def __init__(self, name: str, path: Path, code: CodeType) -> None:
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        spec = importlib.util.spec_from_loader(fullname, self, origin=str(self.path))
        if spec is not None:
            spec.has_location = True
        return spec

    def exec_module(self, module: ModuleType) -> None:
        exec(self.code, module.__dict__)


def _forget_ours() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _OURS:
            del sys.modules[name]


def _child(tests: Sequence[str], finder: _MutantFinder | None) -> int:
    """Runs in the forked process: the tests, against the mutant if there is one."""
    sys.dont_write_bytecode = True
    _forget_ours()
    if finder is not None:
        sys.meta_path.insert(0, finder)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    import pytest

    # --noconftest: the shared conftest only holds the cluster fixtures, which no
    # unit test takes; skipping it saves a tenth of a second per mutant.
    return int(pytest.main([*tests, "-x", "-q", "--noconftest", "-p", "no:cacheprovider"]))


@dataclass
class _Job:
    mutant: Mutant | None
    tests: tuple[str, ...]
    finder: _MutantFinder | None
    timeout: float
    pid: int = 0
    started: float = 0.0
    outcome: str = ""
    seconds: float = 0.0


def _start(job: _Job) -> None:
    job.started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child never returns into the parent's code
        code = 3
        try:
            code = _child(job.tests, job.finder)
        finally:
            os._exit(code)
    job.pid = pid


def _outcome(status: int) -> str:
    # pytest exits 0 when every test passed; 1 (failed), 2 (interrupted, e.g. the
    # mutated module fails to import), 3 (internal error) and a crash all kill.
    return SURVIVED if os.waitstatus_to_exitcode(status) == 0 else KILLED


def run_jobs(jobs: list[_Job], workers: int, progress: bool) -> None:
    pending = list(reversed(jobs))
    running: dict[int, _Job] = {}
    done = 0
    while pending or running:
        while pending and len(running) < workers:
            job = pending.pop()
            _start(job)
            running[job.pid] = job
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid in running:
            job = running.pop(pid)
            job.outcome, job.seconds = _outcome(status), time.monotonic() - job.started
            done += 1
            if progress:
                print(f"\r  {done}/{len(jobs)} mutants", end="", file=sys.stderr, flush=True)
            continue
        now = time.monotonic()
        for job in list(running.values()):
            if now - job.started > job.timeout:
                os.kill(job.pid, signal.SIGKILL)
                os.waitpid(job.pid, 0)
                del running[job.pid]
                job.outcome, job.seconds = TIMEOUT, now - job.started
                done += 1
        time.sleep(0.005)
    if progress:
        print(file=sys.stderr)


@dataclass
class _Score:
    module: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        (KILLED, TIMEOUT, SURVIVED, EQUIVALENT), 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def scored(self) -> int:
        return self.total - self.counts[EQUIVALENT]

    @property
    def percent(self) -> float:
        caught = self.counts[KILLED] + self.counts[TIMEOUT]
        return 100.0 * caught / self.scored if self.scored else 100.0


def _table(scores: list[_Score]) -> str:
    header = f"{'module':<26}{'mutants':>8}{'killed':>8}{'timeout':>8}{'survived':>9}" \
             f"{'equivalent':>11}{'score':>9}"
    rows = [header, "-" * len(header)]
    for s in scores:
        c = s.counts
        rows.append(f"{s.module:<26}{s.total:>8}{c[KILLED]:>8}{c[TIMEOUT]:>8}{c[SURVIVED]:>9}"
                    f"{c[EQUIVALENT]:>11}{s.percent:>8.1f}%")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (e.g. selectors, sources/trivy); "
                        "all by default")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--fail-under", type=float, default=0.0, metavar="PERCENT",
                        help="exit 1 when a module scores under this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)

    os.chdir(REPO)
    chosen = [m for m in MODULES if not args.modules
              or any(m.removesuffix(".py") in (a, a.removesuffix(".py")) or m == a for a in args.modules)]
    if not chosen:
        parser.error(f"no such module; choose from: {', '.join(MODULES)}")
    equivalents = read_equivalents(EQUIVALENTS)
    found = {m: mutants(PACKAGE / m, m) for m in chosen}
    if args.list:
        for relative, items in found.items():
            for mutant in items:
                mark = "  (equivalent)" if mutant.id in equivalents else ""
                print(f"{relative}:{mutant.line}: {mutant.id}{mark}")
        return 0

    for name in _PRELOAD:
        __import__(name)
    # Import Firebreak's own modules once (to pull in every library they use), then
    # forget them, so that each child imports them afresh, mutant included.
    for relative in chosen:
        __import__(module_name(relative))
    _forget_ours()

    # The unmutated tests must pass, and tell how long a run takes.
    baselines = [_Job(None, MODULES[m], None, timeout=120.0) for m in chosen]
    run_jobs(baselines, args.jobs, progress=False)
    for relative, job in zip(chosen, baselines, strict=True):
        if job.outcome != SURVIVED:
            print(f"the tests of {relative} fail without any mutant: "
                  f"{' '.join(MODULES[relative])}", file=sys.stderr)
            return 2

    jobs: list[_Job] = []
    results: dict[str, list[tuple[Mutant, str]]] = {m: [] for m in chosen}
    for relative, baseline in zip(chosen, baselines, strict=True):
        path = PACKAGE / relative
        timeout = max(10.0, 10 * baseline.seconds)
        for mutant in found[relative]:
            if mutant.id in equivalents:
                results[relative].append((mutant, EQUIVALENT))
                continue
            code = compile(mutated_tree(path, mutant), str(path), "exec")
            finder = _MutantFinder(module_name(relative), path, code)
            jobs.append(_Job(mutant, MODULES[relative], finder, timeout))

    started = time.monotonic()
    print(f"{sum(len(v) for v in found.values())} mutants in {len(chosen)} modules, "
          f"{len(jobs)} to run on {args.jobs} worker(s)", file=sys.stderr)
    run_jobs(jobs, args.jobs, progress=sys.stderr.isatty())
    for job in jobs:
        assert job.mutant is not None
        results[job.mutant.module].append((job.mutant, job.outcome))

    scores = []
    overall = _Score("overall")
    for relative in chosen:
        score = _Score(relative)
        for _, outcome in results[relative]:
            score.counts[outcome] += 1
            overall.counts[outcome] += 1
        scores.append(score)
    survivors = [(m, o) for relative in chosen for m, o in sorted(
        results[relative], key=lambda r: r[0].index) if o == SURVIVED]
    all_ids = {m.id for items in found.values() for m in items}
    stale = sorted(i for i in equivalents
                   if i.split(" | ")[0] in chosen and i not in all_ids)

    REPORT.mkdir(exist_ok=True)
    (REPORT / "survivors.txt").write_text("".join(
        f"{m.module}:{m.line}: {m.id}\n" for m, _ in survivors))
    (REPORT / "report.json").write_text(json.dumps({
        "modules": {s.module: {**s.counts, "mutants": s.total, "score": round(s.percent, 1)}
                    for s in [*scores, overall]},
        "survivors": [{"id": m.id, "module": m.module, "line": m.line, "function": m.qualname,
                       "before": m.before, "after": m.after} for m, _ in survivors],
        "equivalent": {m.id: equivalents[m.id] for relative in chosen
                       for m, o in results[relative] if o == EQUIVALENT},
        "staleEquivalents": stale,
    }, indent=2) + "\n")

    print(_table([*scores, overall]))
    print(f"\n{overall.counts[EQUIVALENT]} equivalent mutant(s) excluded from the scores "
          f"(listed with reasons in {EQUIVALENTS.relative_to(REPO)}); "
          f"{time.monotonic() - started:.0f}s")
    if survivors:
        print(f"\nSurvivors ({len(survivors)}), also in {REPORT.relative_to(REPO)}/survivors.txt:")
        for mutant, _ in survivors:
            print(f"  {mutant.module}:{mutant.line} {mutant.qualname}: {mutant.before} -> {mutant.after}")
    failed = False
    if stale:
        print("\nequivalent.txt names mutants that no longer exist (remove or update them):")
        for item in stale:
            print(f"  {item}")
        failed = True
    low = [s.module for s in scores if s.percent < args.fail_under]
    if low:
        print(f"\nUnder {args.fail_under:g}%: {', '.join(low)}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    # Set and dict order must not vary from run to run: fix the hash seed.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "tests.mutation", *sys.argv[1:]])
    sys.exit(main())
