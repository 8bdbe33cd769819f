"""Operator hooks: executables the CPE runs on stored events (the role of Pacemaker's alert
agents, docs/cpe.md "Hooks").

Configured in the CPE's config file, one section per hook::

    [hook notify]
    exec = /usr/local/bin/pcloud-notify --channel ops
    types = resource_state_change, deployable_state_change
    deployable = dep1 dep2
    state = failed
    timeout = 30
    concurrency = 4

Matching (``matches``) and the hook's environment (``hook_env``) are pure; ``HookRunner`` does
the I/O. A hook gets the event as environment variables built from scratch (never the CPE's
own environment, which may hold broker URLs) and its XML on stdin; it runs in a session of its
own, without a shell, and its whole process group is killed at its timeout. Each hook has a
bounded queue and ``concurrency`` worker threads: a full queue drops the run (logged), so no
hook, however slow, holds up the CPE. Every run ends in a ``hook_result`` event. Events of that
type never run hooks, so a hook on every event cannot feed itself.
"""

from __future__ import annotations

import configparser
import logging
import os
import queue
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from pcloud import wire

log = logging.getLogger("pcloud.cpe.hooks")

HOOK_RESULT = "hook_result"
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONCURRENCY = 4
QUEUE_SIZE = 256            # waiting runs per hook; beyond that a run is dropped and logged
KILL_GRACE = 5.0            # seconds to collect a killed hook's output
FIRST_LINE = 512            # characters of the hook's first output line kept for the log
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_FILTERS = ("types", "deployable", "assembly", "resource", "state")
_KEYS = frozenset({"exec", "timeout", "concurrency", *_FILTERS})
_NOT_ENV = re.compile(r"[^A-Z0-9_]")
#: Event attributes with a variable of their own name (the rest: PCLOUD_EVENT_<NAME>).
_NAMED = {"type": "PCLOUD_EVENT_TYPE", "seq": "PCLOUD_EVENT_SEQ", "time": "PCLOUD_EVENT_TIME",
          "deployable": "PCLOUD_DEPLOYABLE", "assembly": "PCLOUD_ASSEMBLY",
          "resource": "PCLOUD_RESOURCE", "state": "PCLOUD_STATE",
          "previous": "PCLOUD_PREVIOUS", "reason": "PCLOUD_REASON"}


class HookConfigError(ValueError):
    """A ``[hook NAME]`` section that cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class Hook:
    """One configured hook; a filter of None matches everything."""

    name: str
    argv: tuple[str, ...]
    types: frozenset[str] | None = None
    deployable: frozenset[str] | None = None
    assembly: frozenset[str] | None = None
    resource: frozenset[str] | None = None
    state: frozenset[str] | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY


@dataclass(frozen=True)
class HookResult:
    hook: str
    seq: str
    exit_status: int | None     # None: it could not run, or was killed at its timeout
    duration_ms: int
    first_line: str
    timed_out: bool = False
    error: str | None = None

    def reason(self) -> str:
        if self.error:
            return f"hook {self.hook} could not run: {self.error}"
        if self.timed_out:
            return f"hook {self.hook} killed after its timeout ({self.duration_ms} ms)"
        return f"hook {self.hook} exited {self.exit_status}" + (
            f": {self.first_line}" if self.first_line else "")


def _words(text: str) -> frozenset[str] | None:
    words = frozenset(w for w in text.replace(",", " ").split() if w)
    return words or None


def parse_hooks(sections: Mapping[str, Mapping[str, str]]) -> tuple[list[Hook], list[str]]:
    """The hooks of a config file's sections (``[hook NAME]``; others are ignored) and why
    each unusable one is left out: one bad section must not silence the others."""
    hooks, errors = [], []
    for title, options in sections.items():
        if not title.startswith("hook "):
            continue
        try:
            hooks.append(_parse_hook(title, options))
        except HookConfigError as exc:
            errors.append(str(exc))
    return hooks, errors


def _parse_hook(title: str, options: Mapping[str, str]) -> Hook:
    """One ``[hook NAME]`` section (HookConfigError when unusable)."""
    name = title[5:].strip()
    where = f"[{title}]"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise HookConfigError(f"{where}: a hook name is letters, digits, '_' and '-'")
    unknown = sorted(set(options) - _KEYS)
    if unknown:
        raise HookConfigError(f"{where}: unknown option {', '.join(unknown)} (known: "
                              f"{', '.join(sorted(_KEYS))})")
    try:
        argv = tuple(shlex.split(options.get("exec", "")))
    except ValueError as exc:
        raise HookConfigError(f"{where}: exec: {exc}") from None
    if not argv or not os.path.isabs(argv[0]):
        raise HookConfigError(f"{where}: exec must name an executable by its absolute path")
    try:
        timeout = float(options.get("timeout", DEFAULT_TIMEOUT))
        concurrency = int(options.get("concurrency", DEFAULT_CONCURRENCY))
    except ValueError:
        raise HookConfigError(f"{where}: timeout and concurrency are numbers") from None
    if not 0 < timeout <= 3600 or not 1 <= concurrency <= 64:
        raise HookConfigError(f"{where}: timeout is 0-3600 s, concurrency 1-64")
    filters = {key: _words(options.get(key, "")) for key in _FILTERS}
    return Hook(name, argv, timeout=timeout, concurrency=concurrency, **filters)


def load_hooks(path: Path) -> tuple[list[Hook], list[str]]:
    """The hooks configured in the CPE's config file (none when it is missing), and errors."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (OSError, configparser.Error) as exc:
        return [], [f"{path}: {exc}"]
    return parse_hooks({title: dict(parser[title]) for title in parser.sections()})


def matches(hook: Hook, event: Mapping[str, str]) -> bool:
    """Whether ``hook`` runs on ``event`` (its attributes). A ``hook_result`` never runs a
    hook: a hook on every event would otherwise run on its own results for ever."""
    if event.get("type") == HOOK_RESULT:
        return False
    checks = (("types", "type"), ("deployable", "deployable"), ("assembly", "assembly"),
              ("resource", "resource"), ("state", "state"))
    for option, attribute in checks:
        wanted = getattr(hook, option)
        if wanted is not None and event.get(attribute) not in wanted:
            return False
    return True


def hook_env(hook: Hook, event: Mapping[str, str], started: str) -> dict[str, str]:
    """The hook's whole environment: the event and nothing else of the CPE's (no secrets).
    ``started`` is the time taken before it runs, as Pacemaker's alert timestamp is."""
    env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8", "PCLOUD_HOOK": hook.name,
           "PCLOUD_HOOK_TIMESTAMP": started}
    for attribute, value in event.items():
        key = _NAMED.get(attribute) or "PCLOUD_EVENT_" + _NOT_ENV.sub("_", attribute.upper())
        env[key] = value.replace("\0", "")
    return env


def first_line(output: bytes) -> str:
    for line in output.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()[:FIRST_LINE]
    return ""


def run_hook(hook: Hook, event: Mapping[str, str], xml: bytes) -> HookResult:
    """Run one hook on one event, to its end or its timeout; never raises."""
    started = wire.now()
    begin = time.monotonic()
    seq = event.get("seq", "")
    with tempfile.TemporaryFile() as output:
        try:
            proc = subprocess.Popen(hook.argv, stdin=subprocess.PIPE, stdout=output,
                                    stderr=subprocess.STDOUT, env=hook_env(hook, event, started),
                                    cwd="/", start_new_session=True, close_fds=True)
        except OSError as exc:
            return HookResult(hook.name, seq, None, _ms(begin), "", error=str(exc))
        timed_out = False
        try:
            proc.communicate(xml, timeout=hook.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            try:
                proc.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output.seek(0)
        line = first_line(output.read(64 * 1024))
    status = None if timed_out else proc.returncode
    return HookResult(hook.name, seq, status, _ms(begin), line, timed_out=timed_out)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ms(begin: float) -> int:
    return int((time.monotonic() - begin) * 1000)


def result_event(event: Mapping[str, str], result: HookResult) -> etree._Element:
    """The ``hook_result`` event (without seq and time: its numberer adds them)."""
    element = etree.Element("event", type=HOOK_RESULT, deployable=event["deployable"])
    for name in ("assembly", "resource"):
        if event.get(name):
            element.set(name, event[name])
    element.set("reason", result.reason()[:4096])
    element.set("hook", result.hook)
    element.set("for_seq", result.seq)
    element.set("for_type", event.get("type", ""))
    if result.exit_status is not None:
        element.set("exit_status", str(result.exit_status))
    element.set("duration_ms", str(result.duration_ms))
    if result.timed_out:
        element.set("timed_out", "true")
    return element


class HookRunner:
    """Runs the configured hooks off the caller's thread; ``publish`` gets every result.

    ``submit`` only queues (it is called on the bus's dispatcher thread); each hook's workers
    run its queue. ``stats`` counts runs and failures per hook, for the metrics."""

    def __init__(self, hooks: list[Hook],
                 publish: Callable[[etree._Element], None] | None = None) -> None:
        self.hooks = hooks
        self.publish = publish
        self.stats: dict[str, dict[str, int]] = {
            h.name: {"run": 0, "failed": 0, "dropped": 0} for h in hooks}
        self._lock = threading.Lock()
        self._queues: dict[str, queue.Queue] = {}
        self._threads: list[threading.Thread] = []
        for hook in hooks:
            work: queue.Queue = queue.Queue(QUEUE_SIZE)
            self._queues[hook.name] = work
            for number in range(hook.concurrency):
                thread = threading.Thread(target=self._work, args=(hook, work), daemon=True,
                                          name=f"hook-{hook.name}-{number}")
                thread.start()
                self._threads.append(thread)

    def submit(self, event: etree._Element) -> None:
        attrs = {str(k): str(v) for k, v in event.attrib.items()}
        xml = etree.tostring(event, encoding="utf-8")
        for hook in self.hooks:
            if not matches(hook, attrs):
                continue
            try:
                self._queues[hook.name].put_nowait((attrs, xml))
            except queue.Full:
                self._count(hook.name, "dropped")
                log.warning("hook %s: %d runs waiting already; dropped its run for event %s "
                            "of %s", hook.name, QUEUE_SIZE, attrs.get("seq"),
                            attrs.get("deployable"))

    def close(self) -> None:
        for hook in self.hooks:
            for _ in range(hook.concurrency):
                try:
                    self._queues[hook.name].put_nowait(None)
                except queue.Full:
                    pass

    def _count(self, name: str, what: str) -> None:
        with self._lock:
            self.stats[name][what] += 1

    def _work(self, hook: Hook, work: queue.Queue) -> None:
        while True:
            item = work.get()
            if item is None:
                return
            attrs, xml = item
            try:
                self._run(hook, attrs, xml)
            except Exception:
                log.exception("hook %s: running it failed", hook.name)

    def _run(self, hook: Hook, attrs: dict[str, str], xml: bytes) -> None:
        result = run_hook(hook, attrs, xml)
        self._count(hook.name, "run")
        ok = result.exit_status == 0
        if not ok:
            self._count(hook.name, "failed")
        (log.info if ok else log.warning)(
            "hook %s on event %s of %s: %s (%d ms)", hook.name, result.seq,
            attrs.get("deployable"), result.reason(), result.duration_ms)
        if self.publish is not None:
            try:
                self.publish(result_event(attrs, result))
            except Exception as exc:
                log.warning("hook %s: could not raise its hook_result event: %s", hook.name, exc)
