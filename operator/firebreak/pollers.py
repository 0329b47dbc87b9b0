"""Pull sources: Prometheus, polled for firing alerts at a fixed interval.

Only changes are recorded: an alert seen firing for the first time (or first
since the operator started) is recorded as a signal, and one that disappears
from the result is recorded as resolved. A steady alert costs one query per
interval and no API writes. Prometheus being down is retried with backoff
(tenacity) and logged; polling resumes when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import tenacity
from prometheus_api_client import PrometheusConnect

from .config import OperatorConfig
from .intake import Intake, Recorded
from .kube import TemporaryApiError
from .sources.prometheus import signals_from_alerts_query
from .sources.signal import Signal, SignalStatus

log = logging.getLogger(__name__)


class PrometheusPoller:
    def __init__(self, config: OperatorConfig, intake: Intake) -> None:
        assert config.prometheus_url is not None
        self.config, self.intake = config, intake
        self.client = PrometheusConnect(url=config.prometheus_url, disable_ssl=False)
        self.firing: dict[str, Signal] = {}

    @tenacity.retry(wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10),
                    stop=tenacity.stop_after_attempt(4), reraise=True)
    def query(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.custom_query(query=self.config.prometheus_query)
        return result

    def poll_once(self) -> list[Recorded]:
        """One poll: record what started and what stopped firing since the last one."""
        now_firing = {s.fingerprint: s for s in signals_from_alerts_query(self.query())}
        recorded = []
        for fingerprint, signal in now_firing.items():
            if fingerprint not in self.firing:
                recorded.append(self.intake.record(signal))
                self.firing[fingerprint] = signal
        for fingerprint in list(self.firing):
            if fingerprint not in now_firing:
                gone = self.firing[fingerprint]
                recorded.append(self.intake.record(
                    gone.model_copy(update={"status": SignalStatus.resolved})))
                del self.firing[fingerprint]
        return recorded

    async def run(self) -> None:
        log.info("polling %s every %.0fs: %s", self.config.prometheus_url,
                 self.config.prometheus_interval, self.config.prometheus_query)
        while True:
            try:
                await asyncio.to_thread(self.poll_once)
            except TemporaryApiError as exc:
                log.warning("Prometheus poll: the API server is unavailable, retrying: %s", exc)
            except Exception as exc:  # Prometheus down or answering nonsense: try next time
                log.warning("Prometheus poll failed: %s", exc)
            await asyncio.sleep(self.config.prometheus_interval)
