"""The interactive pcloudsh: a ``cmd.Cmd`` prompt over the same commands as the one-shot CLI.

Completion knows command names and, per argument, catalogue names (assemblies, deployables,
resources, templates, JEOS images), roles, and the users the CPE lists; history is kept in
``<state>/pcloudsh/history``. While the prompt waits, events are shown live above it, so an
operator sees failures and recoveries as they happen (pacemaker-cloud's "user interface
feedback").
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
from pcloud.events import Event
from pcloudsh import cpe_commands, event_commands, user_commands, validate
from pcloudsh.catalogue import template_names
from pcloudsh.commands import REGISTRY, CommandError, Commands, command
from pcloudsh.event_commands import SeqOrder

try:
    import readline
except ImportError:  # pragma: no cover - readline is part of CPython on Linux
    readline = None  # type: ignore[assignment]

# register the deployable, event and user commands
assert cpe_commands and event_commands and user_commands
BUILTINS = ("help", "quit", "exit", "watch")


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

    # --- lifecycle ---------------------------------------------------------------------

    def preloop(self) -> None:
        if readline is not None:
            readline.set_completer_delims(" \t\n")
            with contextlib.suppress(OSError):
                readline.read_history_file(self._history)
            readline.set_history_length(1000)
        if self.live_events:
            threading.Thread(target=self._start_watch, daemon=True).start()

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
                try:
                    line = input(self.prompt)
                except EOFError:
                    line = "EOF"
                except KeyboardInterrupt:
                    self.commands.say("")
                    continue
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
            self.commands.say(f"*** no command {args[0]!r}")
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
            self._stop_watch()
            self.commands.say("live events off")
        elif args in ([], ["on"]):
            self._start_watch()
            if self._watch is not None:
                self.commands.say("live events on")
        else:
            self.commands.say("*** usage: watch [on|off]")

    def _start_watch(self) -> None:
        if self._watch is not None:
            return
        order = SeqOrder(self._show_event)
        try:
            self._watch = self.commands.bus().subscribe(
                "pcloud.event.#", lambda msg: self._on_event(msg, order))
        except CommandError as exc:
            order.close()
            self.commands.say(f"(live events unavailable: {exc})")
            return
        self._order = order

    def _stop_watch(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):
                self._watch.cancel()
            self._watch = None
        if self._order is not None:
            self._order.close()
            self._order = None

    @staticmethod
    def _on_event(msg: Message, order: SeqOrder) -> None:
        try:
            element = xmlsafe.parse(msg.body, source="event")
            order.add(Event.from_xml(element, source="event"), element)
        except xmlsafe.XMLError:
            return

    def _show_event(self, event: Event, _element: Any) -> None:
        line = event.describe(local_time=True)
        pending = readline.get_line_buffer() if readline is not None else ""
        if sys.stdin.isatty():
            self.commands.say(f"\r\x1b[K{line}")
            self.stdout.write(self.prompt + pending)
            self.stdout.flush()
        else:
            self.commands.say(line)
