"""The main job (``make run``): start pcloud, deploy the web shop, break it, watch it heal.

Everything runs on the embedded defaults: a private RabbitMQ node (unless PCLOUD_BROKER_URL
is set), ``cped`` as a subprocess, the ``process`` infrastructure (each assembly a sandbox of
processes on this host), SQLite, the native transition computer. Every step is narrated;
events are shown live as pcloud publishes them; recoveries are timed from the kill (the
events' own "recovered in" counts from detection; the narration shows both). Whatever
happens (failure, Ctrl-C), the ``finally`` block stops what was started and checks that no
process is left behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pcloud import broker, paths
from pcloud.bus import Bus, BusError, Message, MethodError
from pcloud.events import Event, parse_time
from pcloudsh import display
from pcloudsh.demo_procs import kill_tree, leftovers, ours, resource_pid, sandbox_tree

DEPLOYABLE = "webshop"
WEB_PORT, API_PORT = 8080, 8081
BIN = Path(sys.executable).parent


class Narrator:
    """Prints steps and live events without interleaving them mid-line."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.step_no = 0

    def step(self, text: str) -> None:
        self.step_no += 1
        self.say(f"\n== {self.step_no}. {text}")

    def say(self, text: str) -> None:
        with self.lock:
            print(text, flush=True)

    def note(self, text: str) -> None:
        self.say(f"   {text}")


class EventLog:
    """Every event seen on ``pcloud.event.#``, printed live and kept for waiting on."""

    def __init__(self, narrator: Narrator, echo: bool = True) -> None:
        self.narrator = narrator
        self.echo = echo              # print each event (not when pcloudsh shows them)
        self.events: list[Event] = []
        self.cond = threading.Condition()

    def on_message(self, msg: Message) -> None:
        try:
            event = Event.from_xml(msg.body, source="event")
        except Exception:
            return
        if self.echo:
            self.narrator.say(f"   event | {event.describe(local_time=True)}")
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float, what: str,
                 after: float = 0.0) -> Event:
        """The first event (published after wall time ``after``) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event in self.events:
                    if event.time.timestamp() >= after and predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DemoError(f"no event '{what}' within {timeout:.0f} s")
                self.cond.wait(remaining)


class DemoError(Exception):
    """A step did not happen as it should; the message says which."""


def is_about(event: Event, type_: str, state: str, assembly: str | None = None,
             resource: str | None = None) -> bool:
    return (event.type.value == type_ and event.state == state
            and event.assembly == assembly and event.resource == resource)


def http_get(port: int, timeout: float = 1.0) -> tuple[int, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=timeout) as answer:
        return answer.status, len(answer.read())


def wait_http(port: int, timeout: float) -> float:
    """Poll until the port answers 200; returns the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http_get(port, timeout=0.5)[0] == 200:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.02)
    raise DemoError(f"http://127.0.0.1:{port}/ did not answer within {timeout:.0f} s")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self, root: Path, broker_url: str | None) -> None:
        self.n = Narrator()
        self.state_dir = root / "pcloud"
        self.broker_dir = root / "broker"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.own_broker = False
        self.cped: subprocess.Popen[bytes] | None = None
        self.bus: Bus | None = None
        self.log = EventLog(self.n)
        self.web_port, self.api_port = WEB_PORT, API_PORT
        self.deployable = DEPLOYABLE
        self.started_deployable = False

    # --- steps -------------------------------------------------------------------------

    def run(self) -> None:
        self.n.say("pcloud keeps the services of a cloud application running: it starts them, "
                   "watches them,\nrestarts what fails (fencing a whole VM first when it stops "
                   "answering) and tells everyone\nwhat happened on an AMQP 1.0 bus. This demo "
                   "runs it on this host and breaks things on purpose.")
        self.start_broker()
        self.start_cped()
        self.deploy()
        self.kill_service()
        self.kill_assembly()
        self.show_status()
        self.stop_all()

    def start_broker(self) -> None:
        if self.broker_url:
            self.n.step("Broker: using PCLOUD_BROKER_URL")
            return
        self.n.step("Starting a private RabbitMQ node (AMQP 1.0 plugin) for pcloud's bus")
        t0 = time.monotonic()
        self.own_broker = True
        self.broker_url = broker.start(self.broker_dir, port=free_port())
        self.n.note(f"broker up in {time.monotonic() - t0:.1f} s at "
                    f"{self.broker_url.split('@')[-1]}")

    def environment(self) -> dict[str, str]:
        """What cped and pcloudsh run with: this demo's broker and state dir."""
        env = dict(os.environ, PCLOUD_BROKER_URL=self.broker_url or "",
                   PCLOUD_STATE_DIR=str(self.state_dir))
        if self.own_broker:     # the CPE gives every DPE and agent a login on this node
            env["PCLOUD_BROKER_ADMIN"] = str(self.broker_dir)
        return env

    def start_cped(self) -> None:
        self.n.step("Starting the Cloud Policy Engine (cped): it stores deployables and runs "
                    "one DPE per deployable")
        env = self.environment()
        logfile = open(self.state_dir / "cped.log", "ab")
        self.cped = subprocess.Popen([str(BIN / "cped"), "--foreground", "--state-dir",
                                      str(self.state_dir)], stdout=logfile, stderr=logfile,
                                     env=env)
        logfile.close()
        self.bus = Bus(url=self.broker_url, name="pcloud-demo").start(timeout=15.0)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.bus.call("pcloud.cpe", "deployables_list", "<deployables/>", timeout=2.0)
                break
            except BusError:
                if self.cped.poll() is not None or time.monotonic() > deadline:
                    raise DemoError(f"cped did not come up; see {self.state_dir}/cped.log"
                                    ) from None
        self.n.note(f"cped (pid {self.cped.pid}) answers on queue pcloud.cpe; state in "
                    f"{self.state_dir}")
        self.bus.subscribe("pcloud.event.#", self.log.on_message).wait_attached(10.0)
        if self.log.echo:
            self.n.note("watching events on /topic/pcloud.event.# (shown live below as "
                        "'event |')")

    def document(self) -> str:
        """webshop.xml with the ports chosen by ``choose_ports``."""
        text = (paths.data_dir("xml") / "examples" / "webshop.xml").read_text(encoding="utf-8")
        for port, chosen in ((WEB_PORT, self.web_port), (API_PORT, self.api_port)):
            text = text.replace(str(port), str(chosen))
        return text

    def choose_ports(self) -> None:
        """Take another port where the example's is busy, before any port is announced."""
        for attr, port in (("web_port", WEB_PORT), ("api_port", API_PORT)):
            if not port_free(port):
                other = free_port()
                self.n.note(f"port {port} of the example is busy on this host: the demo uses "
                            f"{other} instead")
                setattr(self, attr, other)

    def deploy(self) -> None:
        self.n.step("Deploying xml/examples/webshop.xml: 3 assemblies (VMs), started in "
                    "dependency order")
        self.choose_ports()
        self.n.note("db  : 'store' (a real OCF agent, ocf:heartbeat:Dummy) and 'journal'")
        self.n.note(f"app : 'api', an HTTP server on 127.0.0.1:{self.api_port}")
        self.n.note(f"web : 'httpd', the front end on 127.0.0.1:{self.web_port}")
        self.n.note("db:store must run before app:api and web:httpd start (across assemblies)")
        assert self.bus is not None
        answer = self.bus.call("pcloud.cpe", "deployable_start", self.document(), timeout=15.0)
        self.started_deployable = True
        self.n.note(f"CPE answered: deployable {answer.get('name')} {answer.get('state')}")
        t0 = time.time()
        self.log.wait_for(lambda e: is_about(e, "deployable_state_change", "running"), 60,
                          "deployable running")
        self.n.note(f"webshop is running ({time.time() - t0:.1f} s after the request)")
        wait_http(self.web_port, 15)
        status, size = http_get(self.web_port, timeout=5.0)
        self.n.say(f"   HTTP GET http://127.0.0.1:{self.web_port}/ -> {status} ({size} bytes): "
                   "the web shop answers")

    def kill_service(self) -> None:
        self.n.step("Killing a service: SIGKILL to web/httpd (like 'killall -9 httpd' in the VM)")
        pid = resource_pid(self.state_dir, f"http.server {self.web_port}")
        if pid is None:
            raise DemoError("cannot find the httpd process of web")
        kill_wall, kill_mono = time.time(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.n.note(f"killed pid {pid}")
        back = self.log.wait_for(lambda e: is_about(e, "resource_state_change", "running",
                                                    "web", "httpd"), 30,
                                 "web/httpd running again", after=kill_wall)
        answered = wait_http(self.web_port, 30)
        total = back.time.timestamp() - kill_wall
        self.n.say(f"   RECOVERED: web/httpd running again {_ms(total)} after the kill; HTTP "
                   f"answering again after {_ms(answered - kill_mono)}")
        self.n.note(_two_clocks(back, kill_wall))
        self.service_recovery = back.time.timestamp() - kill_wall

    def kill_assembly(self) -> None:
        self.n.step("Killing a whole assembly: SIGKILL to every process of the 'web' sandbox "
                    "(like forcing a VM off)")
        pids = sandbox_tree(self.state_dir, DEPLOYABLE, "web")
        if not pids:
            raise DemoError("cannot find the sandbox of assembly web")
        kill_wall, kill_mono = time.time(), time.monotonic()
        kill_tree(pids)
        self.n.note(f"killed {len(pids)} processes (guest agent and its services). The agent "
                    "heartbeats every 1 s; after 3 missed")
        self.n.note("the DPE declares the assembly failed, fences it (powers it off for good) "
                    "and starts it again")
        failed = self.log.wait_for(lambda e: is_about(e, "assembly_state_change", "failed",
                                                      "web"), 30, "web failed",
                                   after=kill_wall)
        fenced = self.log.wait_for(lambda e: e.type.value == "fencing" and e.assembly == "web",
                                   30, "web fenced", after=kill_wall)
        back = self.log.wait_for(lambda e: is_about(e, "resource_state_change", "running",
                                                    "web", "httpd"), 60,
                                 "web/httpd running again", after=kill_wall)
        answered = wait_http(self.web_port, 30)
        self.n.say(f"   RECOVERED: assembly web detected failed after "
                   f"{_ms(failed.time.timestamp() - kill_wall)}, fenced after "
                   f"{_ms(fenced.time.timestamp() - kill_wall)}, httpd running again after "
                   f"{_ms(back.time.timestamp() - kill_wall)}; HTTP answering again after "
                   f"{_ms(answered - kill_mono)}")
        self.n.note(_two_clocks(back, kill_wall))
        self.assembly_recovery = back.time.timestamp() - kill_wall

    def show_status(self) -> None:
        self.n.step("deployable_status webshop (what 'pcloudsh deployable_status webshop' shows)")
        assert self.bus is not None
        status = self.bus.call("pcloud.cpe", "deployable_status",
                               '<deployable name="webshop"/>', timeout=10.0)
        self.n.say(display.status_text(status))

    def stop_all(self) -> None:
        self.n.step("Stopping: the deployable (services in reverse order), then cped and the "
                    "broker")
        self.stop_deployable()
        self.n.note(f"{self.deployable} stopped")

    def stop_deployable(self) -> None:
        if not self.started_deployable or self.bus is None:
            return
        t0 = time.time()
        try:
            self.bus.call("pcloud.cpe", "deployable_stop",
                          f'<deployable name="{self.deployable}"/>', timeout=15.0)
            self.log.wait_for(lambda e: is_about(e, "deployable_state_change", "stopped"), 60,
                              "deployable stopped", after=t0 - 1)
            self.started_deployable = False
        except (BusError, MethodError, DemoError) as exc:
            self.n.note(f"clean stop failed ({exc}); killing what is left")

    # --- cleanup -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop everything this demo started, whatever state it is in."""
        self.stop_deployable()
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self.cped is not None and self.cped.poll() is None:
            self.cped.terminate()
            try:
                self.cped.wait(15)
            except subprocess.TimeoutExpired:
                self.cped.kill()
                self.cped.wait(5)
            self.n.note("cped stopped")
        left = ours(self.state_dir)
        if left:
            kill_tree([p.pid for p in left])
            self.n.note(f"killed {len(left)} leftover processes: "
                        + ", ".join(f"{p.pid} {p.cmdline[:60]}" for p in left))
        if self.own_broker:
            broker.stop(self.broker_dir)
            self.n.note("broker stopped")
        left = leftovers(self.state_dir)
        self.n.note("no pcloud process left behind" if not left
                    else f"processes still running: {left}")


def _two_clocks(back: Event, kill_wall: float) -> str:
    """Why the 'running' event says less than the narration: it counts from detection."""
    detected = back.extra.get("detected_at")
    duration = back.extra.get("duration_ms")
    if detected is None or duration is None:
        return "(times above count from the kill)"
    noticed = parse_time(detected).timestamp() - kill_wall
    return (f"(from the kill: {_ms(noticed)} until pcloud noticed the failure, then "
            f"{_ms(float(duration) / 1000)} from detection to running: the event's "
            "'recovered in')")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def demo_arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The options both demos take: where their files go, and whether to keep them."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="directory for pcloud's state and the private broker (and "
                             "what else the demo starts; default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary state directory (logs) afterwards")
    return parser


def run_demo(make: Callable[[Path], Demo], args: argparse.Namespace, prefix: str,
             errors: tuple[type[BaseException], ...] = ()) -> tuple[Demo, int]:
    """Run a demo in its root folder and clean up whatever happens; returns its exit code
    (0, 1 when a step failed: the root is kept for its logs, 130 when interrupted)."""
    temporary = args.state_dir is None
    root = (args.state_dir or Path(tempfile.mkdtemp(prefix=prefix))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    demo = make(root)
    code = 0
    try:
        demo.run()
    except KeyboardInterrupt:
        demo.n.say("\ninterrupted: cleaning up")
        code = 130
    except (DemoError, BusError, MethodError, broker.BrokerError, OSError, *errors) as exc:
        demo.n.say(f"\nDEMO FAILED: {exc} (logs in {root})")
        code = 1
        temporary = False
    finally:
        demo.cleanup()
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return demo, code


def main(argv: list[str] | None = None) -> int:
    args = demo_arguments("python -m pcloudsh.demo", "Run pcloud's main demo (make run).")\
        .parse_args(argv)
    demo, code = run_demo(lambda root: Demo(root, os.environ.get("PCLOUD_BROKER_URL") or None),
                          args, "pcloud-demo-")
    if code == 0:
        demo.n.say(f"\nDone in {time.monotonic() - demo.n.start:.0f} s. pcloud restarted a "
                   f"killed service in {_ms(demo.service_recovery)} and a killed assembly in "
                   f"{_ms(demo.assembly_recovery)}, with no operator involved.")
    return code


if __name__ == "__main__":
    sys.exit(main())
