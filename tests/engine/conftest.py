"""The engine tier: the engine, intake and webhook over a recording in-memory API,
with a clock the test moves. No cluster; the whole tier runs in seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from firebreak.actions import registry
from firebreak.budget import Budget
from firebreak.config import OperatorConfig
from firebreak.engine import Engine
from firebreak.events import post_event
from firebreak.kube import Kube
from tests.engine.recorder import Recorder
from tests.engine.world import OPERATOR_NS, Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> Recorder:
    return Recorder(clock=clock)


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig(namespace=OPERATOR_NS)


@pytest.fixture
def make_engine(api: Recorder, clock: Clock, config: OperatorConfig) -> Callable[..., Engine]:
    """A fresh engine (as after a restart) over the same API. Events are posted through
    the same API at once, so they are writes like any other."""

    def make(actions: Any = None, config: OperatorConfig = config,
             budget: Budget | None = None) -> Engine:
        kube = api.kube()
        return Engine(kube=kube, config=config, actions=actions or registry(),
                      emit=partial(post_event, kube), clock=clock, budget=budget)

    return make


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine()


@pytest.fixture
def kube(api: Recorder) -> Kube:
    return api.kube()


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Temporary API errors are raised at the first attempt, not retried for 30 s."""
    from firebreak import kube

    monkeypatch.setitem(kube.call.__kwdefaults__, "retry_for", 0.0)
    yield
