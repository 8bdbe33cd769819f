"""The interactive pcloudsh: a ``cmd.Cmd`` prompt over the same commands as the one-shot CLI.

Completion knows command names and, per argument, catalogue names (assemblies, deployables,
resources, templates, JEOS images), roles, and the users the CPE lists; history is kept in
``<state>/pcloudsh/history``. While the prompt waits, events are shown live above it, so an
operator sees failures and recoveries as they happen (pacemaker-cloud's "user interface
feedback"). A keeper thread turns them on once the broker is reachable and says when the
broker goes and comes back; while a command runs, events are plain lines (the prompt is
redrawn only when it is on screen), so a command's own output never follows a stray prompt.
"""

from __future__ import annotations

import cmd
import contextlib
import shlex
import sys
import textwrap
import threading
from typing import Any

from pcloud import xmlsafe
from pcloud.bus import Message
from pcloud.bus.recovery import capped_doubling
from pcloud.events import Event
from pcloudsh import cpe_commands, event_commands, user_commands, validate
from pcloudsh.catalogue import template_names
from pcloudsh.commands import REGISTRY, CommandError, Commands, command, suggestion
from pcloudsh.event_commands import SeqOrder

try:
    import readline
except ImportError:  # pragma: no cover - readline is part of CPython on Linux
    readline = None  # type: ignore[assignment]

# register the deployable, event and user commands
assert cpe_commands and event_commands and user_commands
BUILTINS = ("help", "quit", "exit", "watch")
#: How often the keeper looks at the bus; how long it waits at most between start attempts.
KEEPER_TICK, KEEPER_RETRY_CAP = 0.5, 5.0


@command("<FILE>", "file")
def cmd_validate(self: Commands, args: list[str]) -> None:
    """Check a pcloud XML document against its schema; prints 'valid' or the first error."""
    if len(args) != 1:
        raise CommandError("usage: validate <FILE>")
    if validate.run(args[0], out=self.out) != 0:
        raise CommandError(f"{args[0]} is not valid")


HELP_WIDTH, HELP_COLUMNS = 44, 100


def _help_line(usage: str, doc: str) -> str:
    """One command in the help list, wrapped to 100 columns; a usage too long for its column
    gets a line of its own, so the descriptions stay aligned."""
    indent = " " * (HELP_WIDTH + 3)
    text = textwrap.fill(" ".join(doc.split()), HELP_COLUMNS, initial_indent=indent,
                         subsequent_indent=indent)
    if len(usage) <= HELP_WIDTH:
        return f"  {usage:<{HELP_WIDTH}} {text[len(indent):]}"
    return f"  {usage}\n{text}"


class Shell(cmd.Cmd):
    prompt = "pcloudsh# "
    intro = ("Welcome to pcloudsh, the pcloud operator shell.\n"
             "Type 'help' for the commands, 'help <command>' for one, 'quit' to leave.")

    def __init__(self, commands: Commands, live_events: bool = True) -> None:
        super().__init__(stdout=commands.out)
        self.commands = commands
        self.live_events = live_events
        self._watch: Any = None
        self._order: SeqOrder | None = None
        self._history = commands.state_dir / "pcloudsh" / "history"
        self._want_live = live_events
        self._at_prompt = False
        self._watch_lock = threading.Lock()
        self._closing = threading.Event()
        commands.note = lambda text: self._note(f"(note: {text})")  # type: ignore[method-assign]

    # --- lifecycle ---------------------------------------------------------------------

    def preloop(self) -> None:
        if readline is not None:
            readline.set_completer_delims(" \t\n")
            with contextlib.suppress(OSError):
                readline.read_history_file(self._history)
            readline.set_history_length(1000)
        if self.live_events:
            threading.Thread(target=self._keep_live, name="pcloudsh-live", daemon=True).start()

    def cmdloop(self, intro: Any = None) -> None:
        """``cmd.Cmd.cmdloop`` with bash's Ctrl-C: cancel the line, show a fresh prompt.

        Ctrl-D and ``quit`` leave; Ctrl-C only drops what was typed (the stock loop would
        end the whole shell on the first KeyboardInterrupt).
        """
        self.preloop()
        old_completer = None
        if readline is not None:
            old_completer = readline.get_completer()
            readline.set_completer(self.complete)
            readline.parse_and_bind(self.completekey + ": complete")
        try:
            text = self.intro if intro is None else intro
            if text:
                self.commands.say(str(text))
            stop = False
            while not stop:
                self._at_prompt = True
                try:
                    line = input(self.prompt)
                except EOFError:
                    line = "EOF"
                except KeyboardInterrupt:
                    self.commands.say("")
                    continue
                finally:
                    self._at_prompt = False
                stop = self.postcmd(self.onecmd(self.precmd(line)), line)
        finally:
            self.postloop()
            if readline is not None:
                readline.set_completer(old_completer)

    def postloop(self) -> None:
        if readline is not None:
            with contextlib.suppress(OSError):
                self._history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(self._history)
        self._closing.set()
        self._stop_watch()

    # --- dispatch ----------------------------------------------------------------------

    def onecmd(self, line: str) -> bool:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            self.commands.say(f"*** {exc}")
            return False
        if not words:
            return False
        name, args = words[0], words[1:]
        if name in ("quit", "exit", "EOF"):
            if name == "EOF":
                self.commands.say("")
            return True
        if name == "help":
            self._help(args)
            return False
        if name == "watch":
            self._watch_command(args)
            return False
        try:
            self.commands.run(name, args)
        except CommandError as exc:
            self.commands.say(f"*** {exc}")
        except KeyboardInterrupt:
            self.commands.say("")
        return False

    def emptyline(self) -> bool:
        return False

    def _help(self, args: list[str]) -> None:
        if args and args[0] in REGISTRY:
            spec = REGISTRY[args[0]]
            self.commands.say(f"usage: {spec.usage}\n  {(spec.func.__doc__ or '').strip()}")
            return
        if args and args[0] not in BUILTINS:
            self.commands.say(f"*** no command {args[0]!r}"
                              f"{suggestion(args[0], [*REGISTRY, *BUILTINS])}")
            return
        entries = [(spec.usage, (spec.func.__doc__ or "").strip().split("\n\n")[0])
                   for spec in sorted(REGISTRY.values(), key=lambda s: s.name)]
        entries += [("watch [on|off]", "show events live above the prompt"),
                    ("quit", "leave the shell (or Ctrl-D; Ctrl-C cancels the line)")]
        self.commands.say("Commands:\n" + "\n".join(_help_line(u, d) for u, d in entries))

    # --- completion --------------------------------------------------------------------

    # Python's readline appends nothing to a completed word: the space is added here.

    def completenames(self, text: str, *ignored: Any) -> list[str]:
        return sorted(f"{n} " for n in (*REGISTRY, *BUILTINS) if n.startswith(text))

    def completedefault(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        words = line[:begidx].split()
        if not words:
            return []
        if words[0] == "help":
            return self.completenames(text)
        spec = REGISTRY.get(words[0])
        position = len(words) - 1
        if spec is None or position >= len(spec.kinds):
            return []
        return sorted(f"{n} " for n in self._names(spec.kinds[position]) if n.startswith(text))

    def _names(self, kind: str) -> list[str]:
        catalogue = self.commands.catalogue
        try:
            if kind == "assembly":
                return list(catalogue.assemblies())
            if kind == "deployable":
                return list(catalogue.deployables())
            if kind == "resource":
                return sorted({r for a in catalogue.assemblies().values()
                               for r in a["resources"]})
            if kind == "template":
                return template_names()
            if kind == "infrastructure":
                return ["process", "libvirt", "openstack"]
            if kind == "arch":
                return ["x86_64"]
            if kind == "distro":
                return ["debian-12"]
            if kind == "role":
                return list(user_commands.ROLES)
            if kind == "user":
                return user_commands.user_names(self.commands)
            if kind == "jeos":
                from pcloudsh import images

                return [i.name for i in images.jeos_list(catalogue.images_dir)]
        except Exception:
            return []
        return []

    # --- live events -------------------------------------------------------------------

    def _watch_command(self, args: list[str]) -> None:
        if args == ["off"]:
            self._want_live = False
            self._stop_watch()
            self.commands.say("live events off")
        elif args in ([], ["on"]):
            error = self._start_watch()
            if error is None:
                self.commands.say("live events on")
            else:
                self.commands.say(f"(live events unavailable: {error})")
            if not self._want_live and not self._closing.is_set():
                self._want_live = True
                threading.Thread(target=self._keep_live, name="pcloudsh-live",
                                 daemon=True).start()
        else:
            self.commands.say("*** usage: watch [on|off]")

    def _start_watch(self) -> str | None:
        """Subscribe to every event; the reason when it cannot (None: on)."""
        with self._watch_lock:
            if self._watch is not None:
                return None
            order = SeqOrder(self._show_event)
            try:
                self._watch = self.commands.bus().subscribe(
                    "pcloud.event.#", lambda msg: self._on_event(msg, order))
            except CommandError as exc:
                order.close()
                return str(exc)
            self._order = order
            return None

    def _stop_watch(self) -> None:
        with self._watch_lock:
            if self._watch is not None:
                with contextlib.suppress(Exception):
                    self._watch.cancel()
                self._watch = None
            if self._order is not None:
                self._order.close()
                self._order = None

    def _keep_live(self) -> None:
        """While live events are wanted: start them as soon as the broker can be reached
        (retrying with back-off), and tell the operator when the broker goes and returns;
        the bus re-attaches the subscription by itself on its reconnect."""
        retry = capped_doubling(KEEPER_TICK, KEEPER_RETRY_CAP)
        unavailable: str | None = None
        connected = True
        while self._want_live and not self._closing.is_set():
            if self._watch is None:
                error = self._start_watch()
                if error is None:
                    retry = capped_doubling(KEEPER_TICK, KEEPER_RETRY_CAP)
                    if unavailable is not None:
                        self._note("(the broker is back: live events on)")
                    unavailable = None
                elif unavailable is None:
                    unavailable = error
                    self._note(f"(live events unavailable: {error}; they start when the "
                               "broker can be reached)")
                if self._closing.wait(KEEPER_TICK if error is None else next(retry)):
                    return
                continue
            now = self.commands.connected()
            if connected and not now:
                self._note("(lost the broker: live events paused until it is back)")
            elif now and not connected:
                self._note("(the broker is back: live events on)")
            connected = now
            self._closing.wait(KEEPER_TICK)

    @staticmethod
    def _on_event(msg: Message, order: SeqOrder) -> None:
        try:
            element = xmlsafe.parse(msg.body, source="event")
            order.add(Event.from_xml(element, source="event"), element)
        except xmlsafe.XMLError:
            return

    def _show_event(self, event: Event, _element: Any) -> None:
        self._note(event.describe(local_time=True))

    def _note(self, line: str) -> None:
        """A line from another thread: above the prompt when the prompt is on screen (and
        the prompt redrawn with what was typed), else a plain line."""
        if self._at_prompt and sys.stdin.isatty():
            pending = readline.get_line_buffer() if readline is not None else ""
            self.commands.say(f"\r\x1b[K{line}\n{self.prompt}{pending}", end="")
        else:
            self.commands.say(line)
