"""Real Prometheus and Alertmanager servers on loopback, for alerting tests.

Firebreak is woken by Alertmanager webhooks. An imitation of either server would
only repeat our own reading of their behaviour (when a rule fires, how alerts are
grouped, what a version-4 body looks like, when a ``resolved`` notification comes,
how the bearer token is sent), so these tests run the real binaries from Debian's
``prometheus`` and ``prometheus-alertmanager`` packages (``make alerting``).

Each server is a context manager that owns a temporary folder: its generated
config, its data folder and its log live there. It listens on a free 127.0.0.1
port, is tied to this process (PR_SET_PDEATHSIG, as for the local control plane)
so a killed test run leaves nothing behind, and on exit it is stopped and the
folder removed, whether the test passed or not. Enter them from the main thread:
the kernel's parent-death signal follows the *thread* that started the child.

Timings are shortened for tests; the defaults would make a first notification
take over a minute:
- Prometheus evaluates rules every second and resends after 1s
  (``--rules.alert.resend-delay``), because it drops an alert that fires before it
  has discovered the Alertmanager and otherwise resends only after a minute;
- Alertmanager waits 1s before a group's first notification and between updates,
  and puts every alert in its own group (``group_by: ['...']``), so a test sees
  one alert per notification. Clustering is off (``--cluster.listen-address=``).

Typical use::

    with AlertingStack.started(webhook_url=url, rules={"r.yml": RULES}) as stack:
        stack.prometheus.wait_for_alert("PodCompromised")
        ... # the webhook receives the notification
        stack.prometheus.set_rules({"r.yml": OTHER_RULES})  # reloads
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Self, TypeVar

import yaml

from tests.controlplane.cluster import _die_with_parent, _free_ports, _terminate

T = TypeVar("T")

PROMETHEUS_BINARY = "prometheus"
ALERTMANAGER_BINARY = "prometheus-alertmanager"
READY_TIMEOUT_SECONDS = 60.0
RECEIVER_NAME = "webhook"

RuleFiles = Mapping[str, str] | str


class AlertingError(RuntimeError):
    pass


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AlertingError(f"`{name}` is not installed; run `make alerting`")
    return path


class _Server:
    """One server process with its own temporary folder, port and log."""

    name: ClassVar[str]
    binary: ClassVar[str]

    def __init__(self) -> None:
        self._workdir: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise AlertingError(f"{self.name} is not started")
        return self._workdir

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- process

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write the config files; called before the process starts."""
        raise NotImplementedError

    def start(self) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix=f"firebreak-{self.name}-"))
        if not self.port:
            (self.port,) = _free_ports(1)
        self._prepare()
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [_binary(self.binary), *self._argv()],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.wait_until(self._ready, timeout=READY_TIMEOUT_SECONDS, what=f"{self.name} /-/ready")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove the folder."""
        if self.process is not None:
            _terminate(self.process.pid, self.process)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AlertingError(
                f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        if self._workdir is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_until(
        self, probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.2, what: str
    ) -> T:
        """Call ``probe`` until it returns something truthy; fail early if the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AlertingError(
                    f"timed out after {timeout:.0f}s waiting for {what}; {self.name} log:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(interval)

    # -- HTTP

    def request(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        """Send a request to the server's API and return the decoded JSON (or None)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        req = urllib.request.Request(f"{self.url}{path}{query}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise AlertingError(f"{self.name} {method} {path}: HTTP {exc.code}: {detail}") from exc
        if not body or not body.lstrip().startswith((b"{", b"[")):
            return None
        return json.loads(body)


class AlertmanagerServer(_Server):
    """Alertmanager with one route: every alert, on its own, to one webhook with a bearer token."""

    name = "alertmanager"
    binary = ALERTMANAGER_BINARY

    def __init__(self, webhook_url: str, *, token: str | None = None) -> None:
        super().__init__()
        self.webhook_url = webhook_url
        self.token = token if token is not None else secrets.token_urlsafe(24)

    @property
    def config_path(self) -> Path:
        return self.workdir / "alertmanager.yml"

    def config(self) -> dict[str, Any]:
        return {
            "route": {
                "receiver": RECEIVER_NAME,
                "group_by": ["..."],
                "group_wait": "1s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [{
                "name": RECEIVER_NAME,
                "webhook_configs": [{
                    "url": self.webhook_url,
                    "send_resolved": True,
                    "http_config": {"authorization": {
                        "type": "Bearer",
                        "credentials_file": str(self.workdir / "webhook-token"),
                    }},
                }],
            }],
        }

    def _prepare(self) -> None:
        token_file = self.workdir / "webhook-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _argv(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Links in notifications point here rather than at this host's name.
            f"--web.external-url={self.url}",
            "--cluster.listen-address=",
        ]

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds (API v2); ``filters`` are label matchers ``name=value``."""
        params = [("filter", f'{k}="{v}"') for k, v in filters.items()]
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        result: list[dict[str, Any]] = self.request("GET", f"/api/v2/alerts{query}")
        return result

    def wait_for_alert(self, alertname: str, *, timeout: float = 30.0) -> dict[str, Any]:
        """The first alert named ``alertname`` that Alertmanager has received."""
        alerts: list[dict[str, Any]] = self.wait_until(
            lambda: self.alerts(alertname=alertname), timeout=timeout,
            what=f"alert {alertname} in Alertmanager",
        )
        return alerts[0]


class PrometheusServer(_Server):
    """Prometheus evaluating the given rule files every second and alerting one Alertmanager."""

    name = "prometheus"
    binary = PROMETHEUS_BINARY

    def __init__(
        self,
        *,
        rules: RuleFiles | None = None,
        alertmanager_url: str | None = None,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
        interval: str = "1s",
    ) -> None:
        super().__init__()
        self._rules = _rule_files(rules or {})
        self.alertmanager_url = alertmanager_url
        self.scrape_configs = [dict(c) for c in scrape_configs]
        self.interval = interval

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def rules_dir(self) -> Path:
        return self.workdir / "rules"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(self.rules_dir / "*.yml")],
            "scrape_configs": self.scrape_configs,
        }
        if self.alertmanager_url:
            target = urllib.parse.urlsplit(self.alertmanager_url)
            config["alerting"] = {"alertmanagers": [{
                "api_version": "v2",
                "scheme": target.scheme or "http",
                "path_prefix": target.path or "/",
                "static_configs": [{"targets": [target.netloc]}],
            }]}
        return config

    def _write_rules(self, rules: Mapping[str, str]) -> None:
        self.rules_dir.mkdir(exist_ok=True)
        for old in self.rules_dir.glob("*.yml"):
            if old.name not in rules:
                old.unlink()
        for name, text in rules.items():
            (self.rules_dir / name).write_text(text)

    def _prepare(self) -> None:
        self._write_rules(self._rules)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))

    def _argv(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--web.external-url={self.url}",
            # Needed for /-/reload (set_rules).
            "--web.enable-lifecycle",
            "--rules.alert.resend-delay=1s",
        ]

    def set_rules(self, rules: RuleFiles) -> None:
        """Replace the rule files and reload; raises if Prometheus rejects them.

        Rules keep their state across a reload when their name and labels are
        unchanged, so changing only ``expr`` resolves a firing alert explicitly.
        """
        self._rules = _rule_files(rules)
        self._write_rules(self._rules)
        self.request("POST", "/-/reload")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the ``result`` list."""
        body = self.request("GET", "/api/v1/query", {"query": expr})
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (``/api/v1/alerts``)."""
        alerts: list[dict[str, Any]] = self.request("GET", "/api/v1/alerts")["data"]["alerts"]
        return alerts

    def wait_for_alert(
        self, alertname: str, *, state: str = "firing", timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first alert named ``alertname`` in ``state`` (``pending`` or ``firing``)."""

        def probe() -> dict[str, Any] | None:
            return next((a for a in self.alerts()
                         if a["labels"].get("alertname") == alertname and a["state"] == state),
                        None)

        found: dict[str, Any] = self.wait_until(
            probe, timeout=timeout, what=f"alert {alertname} {state} in Prometheus")
        return found

    def wait_for_no_alert(self, alertname: str, *, timeout: float = 30.0) -> None:
        """Wait until Prometheus holds no pending or firing alert named ``alertname``."""
        self.wait_until(
            lambda: all(a["labels"].get("alertname") != alertname for a in self.alerts()),
            timeout=timeout, what=f"alert {alertname} to stop in Prometheus",
        )


def _rule_files(rules: RuleFiles) -> dict[str, str]:
    if isinstance(rules, str):
        return {"rules.yml": rules}
    files = dict(rules)
    for name in files:
        if "/" in name or not name.endswith(".yml"):
            raise ValueError(f"rule file names are plain `*.yml` names, not {name!r}")
    return files


class AlertingStack:
    """An Alertmanager delivering to ``webhook_url`` and a Prometheus alerting it."""

    def __init__(self, prometheus: PrometheusServer, alertmanager: AlertmanagerServer) -> None:
        self.prometheus = prometheus
        self.alertmanager = alertmanager

    @property
    def token(self) -> str:
        """The bearer token Alertmanager sends to the webhook."""
        return self.alertmanager.token

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        *,
        webhook_url: str,
        rules: RuleFiles,
        token: str | None = None,
        scrape_configs: Sequence[Mapping[str, Any]] = (),
    ) -> Iterator[AlertingStack]:
        """Start Alertmanager, then Prometheus; stop both (Prometheus first) on exit."""
        with AlertmanagerServer(webhook_url, token=token) as alertmanager, PrometheusServer(
            rules=rules, alertmanager_url=alertmanager.url, scrape_configs=scrape_configs,
        ) as prometheus:
            yield cls(prometheus, alertmanager)

    def log_tails(self, lines: int = 30) -> str:
        """Both logs' last lines, for a failing assertion's message."""
        return "\n".join(
            f"--- {server.name}:\n{server.log_tail(lines)}"
            for server in (self.prometheus, self.alertmanager)
        )
