"""Differential fuzzing: the native transition computer against crm_simulate.

    python -m tests.fuzz_transition --seed 1 --cases 500          # stop at the first mismatch
    python -m tests.fuzz_transition --seed 1 --case 42 --show     # one case, both summaries
    python -m tests.fuzz_transition --seed 1 --cases 500 --keep-going --out /tmp/found

Each case is a random CIB in the subset pcloud generates (assemblies as nodes, pinned
primitives with resource-discovery=exclusive, rsc_order chains and fans, the placeholder fence
device) with a random status section (membership, operation histories, fail counts) and a
"now" on either side of failure expiry. Both engines schedule it; the normalized graphs
(actions by operation, resource, node and interval; ordering edges; recheck-by) must be equal.
A disagreement is shrunk to a small CIB that still disagrees and written as a scenario folder
(cib.xml, expected.txt from crm_simulate, description.txt) ready for tests/scenarios/.
A CIB the native engine refuses (EngineError naming the construct) counts as agreeing: the
DPE then uses crm_simulate for it, so no wrong graph is produced.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lxml import etree

from dpe_agent.cib import build_cib
from dpe_agent.digest import op_digest
from dpe_agent.engines import EngineError, get_engine
from dpe_agent.engines.native import NativeEngine
from dpe_agent.observed import AssemblyStatus, ObservedState, OpRecord, ResourceHistory
from tests.scenario_defs import Svc, deployable

NOW = datetime(2026, 11, 21, 9, 0, 0, tzinfo=UTC)
CLASSES = (("ocf", "heartbeat", "Dummy"), ("process", None, ""), ("lsb", None, "cron"),
           ("systemd", None, "nginx"))
NODE_STATES = ("online", "online", "online", "rejoined-empty", "lost", "unclean", "fenced",
               "down-with-history", "never-seen")
FAIL_RCS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
PENDING_RC = 193


# -- the generator -----------------------------------------------------------------------
@dataclass
class Resource:
    rid: str
    asm: str
    cls: str
    provider: str | None
    type: str
    params: dict[str, str]
    monitor_ms: int
    failure_timeout: int | None


def _size(rng: random.Random) -> int:
    """Assemblies: mostly a handful (where the bugs shrink to), sometimes up to 50."""
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(1, 3)
    if roll < 0.9:
        return rng.randint(4, 10)
    return rng.randint(11, 50)


def _params(rng: random.Random, cls: str) -> dict[str, str]:
    if cls == "process":
        return {"command": rng.choice(("sleep 1000", "python3 -m http.server", "a && b"))}
    pool = {"port": ("80", "8080"), "config": ("/etc/x.conf", "/etc/y 'q'.conf"),
            "mode": ("fast", "tab\there", "line1\nline2", "héllo")}
    return {k: rng.choice(v) for k, v in pool.items() if rng.random() < 0.4}


def _config(rng: random.Random) -> tuple[etree._Element, list[Resource], dict]:
    """A deployable (through pcloud's own XSLT) and what the history generator needs."""
    count = _size(rng)
    style = rng.random()
    names = [f"n{i + 1}" if style < 0.5 else f"asm{i}" for i in range(count)]
    rng.shuffle(names)
    assemblies: dict[str, list[Svc]] = {}
    resources: list[Resource] = []
    for name in names:
        services = []
        for s in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
            cls, provider, rtype = rng.choice(CLASSES)
            svc = Svc(f"s{s}", cls=cls, provider=provider, type=rtype,
                      monitor=rng.choice((2, 5, 5, 10)), params=_params(rng, cls))
            if rng.random() < 0.35:
                svc.failures = rng.choice((1, 2, 3, 5))
            if rng.random() < 0.35:
                svc.period = rng.choice((60, 300, 600))
            services.append(svc)
            out_cls, out_provider, out_type = (("ocf", "pcloud", "process") if cls == "process"
                                               else (cls, provider if cls == "ocf" else None,
                                                     rtype))
            resources.append(Resource(f"{name}.{svc.name}", name, out_cls, out_provider,
                                      out_type, svc.params, int(svc.monitor * 1000),
                                      svc.period))
        assemblies[name] = services
    deps = _orders(rng, resources)
    dep = deployable(assemblies, deps)
    options = {
        "stonith": rng.random() < 0.8,
        "device": rng.random() < 0.85,
        "sfif": rng.random() < 0.2,
        "stop_all": rng.random() < 0.08,
    }
    return dep, resources, options


def _orders(rng: random.Random, resources: list[Resource]) -> list[tuple[str, str, str]]:
    """rsc_order chains and fans over a random topological order (never a cycle)."""
    if len(resources) < 2:
        return []
    ranked = resources[:]
    rng.shuffle(ranked)
    pairs: set[tuple[int, int]] = set()
    for _ in range(rng.randint(0, 2 * len(ranked))):
        shape = rng.random()
        i = rng.randrange(len(ranked) - 1)
        if shape < 0.4:                                   # chain link
            pairs.add((i, i + 1))
        elif shape < 0.7:                                 # fan out
            for j in rng.sample(range(i + 1, len(ranked)), min(3, len(ranked) - i - 1)):
                pairs.add((i, j))
        else:                                             # fan in / arbitrary
            pairs.add((i, rng.randrange(i + 1, len(ranked))))
    out = []
    for i, j in sorted(pairs):
        kind = "Optional" if rng.random() < 0.3 else "Mandatory"
        first, then = ranked[i], ranked[j]
        out.append((first.rid.replace(".", ":", 1), then.rid.replace(".", ":", 1), kind))
    return out


class _History:
    """Random operation histories, written through ObservedState like the DPE's own."""

    def __init__(self, rng: random.Random, obs: ObservedState, now: int) -> None:
        self.rng = rng
        self.obs = obs
        self.now = now

    def _record(self, asm: str, res: Resource, operation: str, interval: int, rc: int,
                when: int, params: dict[str, str], op_status: int = 0,
                timeout_ms: int = 20000) -> None:
        self.obs.record_op(asm, res.rid, res.cls, res.type, operation, interval, rc,
                           provider=res.provider, params=params, timeout_ms=timeout_ms,
                           op_status=op_status, now=when)

    def _pending(self, asm: str, res: Resource, operation: str, interval: int,
                 when: int, params: dict[str, str]) -> None:
        """A pending op (record-pending): op-status -1, rc 193, no failure counted."""
        hist = self.obs.resource(asm, res.rid)
        if hist is None:
            hist = ResourceHistory(res.rid, res.cls, res.type, res.provider)
            self.obs.assembly(asm).resources[res.rid] = hist
        expected = 7 if operation == "monitor" and interval == 0 else 0
        op = OpRecord(operation, interval, PENDING_RC, self.obs.next_call_id(), expected, -1,
                      op_digest(params, interval_ms=interval), when)
        if interval:
            hist.monitors[interval] = op
        else:
            hist.last = op

    def _when(self, res: Resource) -> int:
        """A failure time; near the failure-timeout boundary often, on either side of it."""
        rng = self.rng
        if res.failure_timeout and rng.random() < 0.5:
            return self.now - res.failure_timeout + rng.choice((-2, -1, 0, 1, 2, 30, -30))
        return self.now - rng.randint(1, 2000)

    def resource(self, asm: str, res: Resource) -> None:
        rng = self.rng
        params = res.params if rng.random() < 0.85 else {**res.params, "old": "1"}
        monitor = res.monitor_ms if rng.random() < 0.9 else rng.choice((3000, 7000))
        mon_timeout = 20000 if rng.random() < 0.95 else 30000
        t = self.now - rng.randint(2000, 4000)
        running = False
        first = rng.random()
        if first < 0.55:
            self._record(asm, res, "monitor", 0, 7, t, params)
        elif first < 0.75:
            self._record(asm, res, "monitor", 0, 0, t, params)
            running = True
        elif first < 0.8:
            self._record(asm, res, "monitor", 0, rng.choice(FAIL_RCS), t, params)
        elif first < 0.83:
            self._pending(asm, res, "monitor", 0, t, params)
            return
        for _ in range(rng.randint(0, 4)):
            t += rng.randint(1, 100)
            roll = rng.random()
            if not running and roll < 0.6:
                outcome = rng.random()
                if outcome < 0.75:
                    self._record(asm, res, "start", 0, 0, t, params)
                    running = True
                elif outcome < 0.9:
                    self._record(asm, res, "start", 0, rng.choice(FAIL_RCS), self._when(res),
                                 params)
                elif outcome < 0.95:
                    self._record(asm, res, "start", 0, 1, self._when(res), params, op_status=2)
                else:
                    self._pending(asm, res, "start", 0, t, params)
                    return
            elif running and roll < 0.5:
                self._record(asm, res, "monitor", monitor, 0, t, params, timeout_ms=mon_timeout)
                if rng.random() < 0.5:
                    rc = rng.choice(FAIL_RCS)
                    self.obs.report_monitor(asm, res.rid, monitor, rc, now=self._when(res))
                    running = rc in (0, 8)
            elif running and roll < 0.75:
                outcome = rng.random()
                if outcome < 0.8:
                    self._record(asm, res, "stop", 0, 0, t, params)
                    running = False
                elif outcome < 0.95:
                    self._record(asm, res, "stop", 0, rng.choice((1, 5, 6)), self._when(res),
                                 params)
                else:
                    self._pending(asm, res, "stop", 0, t, params)
                    return
            elif roll < 0.85:
                rc = rng.choice((0, 7, 7, 1))
                self._record(asm, res, "monitor", 0, rc, t, params)
                running = rc == 0

    def orphan(self, asm: str, index: int) -> None:
        res = Resource(f"{asm}.gone{index}", asm, "ocf", "heartbeat", "Dummy", {}, 5000, None)
        t = self.now - self.rng.randint(100, 3000)
        self._record(asm, res, "monitor", 0, 7, t, {})
        if self.rng.random() < 0.7:
            self._record(asm, res, "start", 0, 0, t + 1, {})
            self._record(asm, res, "monitor", 5000, 0, t + 2, {})
            if self.rng.random() < 0.2:
                self.obs.report_monitor(asm, res.rid, 5000, 7, now=t + 3)
            elif self.rng.random() < 0.3:
                self._record(asm, res, "stop", 0, 0, t + 3, {})


def generate(rng: random.Random) -> tuple[etree._Element, datetime]:
    """One random CIB and its "now"."""
    dep, resources, options = _config(rng)
    now = NOW + timedelta(seconds=rng.randint(-5, 5))
    epoch = int(now.timestamp())
    obs = ObservedState()
    history = _History(rng, obs, epoch)
    states = {}
    for name in dep.xpath("assemblies/assembly/@name"):
        state = rng.choice(NODE_STATES)
        states[name] = state
        if state in ("fenced", "never-seen"):
            obs.set_fenced(name)
            continue
        obs.set_online(name)
        if state == "rejoined-empty":
            continue
        for res in resources:
            if res.asm == name and rng.random() < 0.8:
                history.resource(name, res)
        for k in range(3):
            if rng.random() < 0.08:
                history.orphan(name, k)
        if state in ("lost", "unclean", "down-with-history"):
            obs.assembly(name).status = AssemblyStatus.LOST
    cib = build_cib(dep, obs, now=now, escalation=True, stop_all=options["stop_all"])
    _apply_options(cib, options)
    for node_state in cib.iterfind("status/node_state"):
        state = states[node_state.get("uname")]
        if state == "unclean":
            node_state.set("in_ccm", "true")
        elif state == "down-with-history":
            node_state.set("expected", "down")
        elif state == "never-seen":
            node_state.getparent().remove(node_state)
    return cib, now


def _apply_options(cib: etree._Element, options: dict) -> None:
    props = cib.find("configuration/crm_config/cluster_property_set")
    for nv in props.iterfind("nvpair"):
        if nv.get("name") == "stonith-enabled":
            nv.set("value", "true" if options["stonith"] else "false")
        elif nv.get("name") == "start-failure-is-fatal":
            nv.set("value", "true" if options["sfif"] else "false")
    if not options["device"]:
        for elem in cib.xpath("configuration/resources/primitive[@id='fence_vm'] | "
                              "configuration/constraints/rsc_location[@rsc='fence_vm']"):
            elem.getparent().remove(elem)


# -- the comparison ----------------------------------------------------------------------
@dataclass
class Outcome:
    """Both engines' summaries of one CIB (``native`` is None when native refused it)."""

    native: list[str] | None
    pacemaker: list[str]
    refused: str | None = None

    @property
    def agree(self) -> bool:
        return self.native is None or self.native == self.pacemaker

    def difference(self) -> list[str]:
        got, want = set(self.native or ()), set(self.pacemaker)
        return ([f"missing in native: {line}" for line in sorted(want - got)]
                + [f"extra in native:   {line}" for line in sorted(got - want)])


_NATIVE = NativeEngine(fallback=False)
_PACEMAKER = get_engine("pacemaker")


def run_both(cib: etree._Element, now: datetime) -> Outcome:
    """Schedule one CIB with both engines (native strict: no fallback to crm_simulate)."""
    pacemaker = _PACEMAKER.compute(cib, now).summary_lines()
    try:
        native = _NATIVE.compute(cib, now).summary_lines()
    except EngineError as exc:
        return Outcome(None, pacemaker, str(exc))
    return Outcome(native, pacemaker)


def disagrees(cib: etree._Element, now: datetime) -> bool:
    try:
        return not run_both(cib, now).agree
    except EngineError:
        return False    # crm_simulate rejects what shrinking made of it


# -- shrinking ---------------------------------------------------------------------------
def _removals(cib: etree._Element) -> Iterator[Callable[[etree._Element], None]]:
    """Candidate reductions, coarse first; each removes something from a copy of ``cib``."""
    def by_path(path: str, extra: Callable[[etree._Element, etree._Element], None] | None):
        for index in range(len(cib.xpath(path))):
            def remove(tree: etree._Element, index: int = index) -> None:
                elem = tree.xpath(path)[index]
                if extra is not None:
                    extra(tree, elem)
                parent = elem.getparent()
                parent.remove(elem)
                if parent.tag == "lrm_resource" and not len(parent):
                    parent.getparent().remove(parent)   # pcloud never writes it empty
            yield remove

    def drop_assembly(tree: etree._Element, node: etree._Element) -> None:
        uname = node.get("uname")
        for prim in tree.xpath("configuration/resources/primitive"):
            if prim.get("id").startswith(uname + "."):
                drop_primitive(tree, prim)
                prim.getparent().remove(prim)
        for state in tree.xpath(f"status/node_state[@id='{node.get('id')}']"):
            state.getparent().remove(state)

    def drop_primitive(tree: etree._Element, prim: etree._Element) -> None:
        rid = prim.get("id")
        for elem in tree.xpath("configuration/constraints/*[@rsc=$r or @first=$r or @then=$r]"
                               " | status//lrm_resource[@id=$r]", r=rid):
            elem.getparent().remove(elem)

    yield from by_path("configuration/nodes/node", drop_assembly)
    yield from by_path("configuration/resources/primitive[@class!='stonith']", drop_primitive)
    yield from by_path("configuration/constraints/rsc_order", None)
    yield from by_path("status/node_state", None)
    yield from by_path("status//lrm_resource", None)
    yield from by_path("status//lrm_rsc_op", None)
    yield from by_path("status//transient_attributes//nvpair", None)
    yield from by_path("configuration/resources/primitive/*/nvpair", None)


def shrink(cib: etree._Element, now: datetime,
           still: Callable[[etree._Element, datetime], bool] = disagrees) -> etree._Element:
    """Greedily remove parts of ``cib`` while it still disagrees."""
    current = cib
    progress = True
    while progress:
        progress = False
        for remove in _removals(current):
            candidate = copy.deepcopy(current)
            try:
                remove(candidate)
            except IndexError:
                continue
            if still(candidate, now):
                current = candidate
                progress = True
                break
    return current


def write_scenario(directory: Path, cib: etree._Element, now: datetime,
                   description: str) -> None:
    """A scenario folder as tests/test_engines.py reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    cib = copy.deepcopy(cib)
    cib.set("execution-date", str(int(now.timestamp())))
    etree.indent(cib)
    (directory / "cib.xml").write_bytes(
        etree.tostring(cib, pretty_print=True, xml_declaration=True, encoding="UTF-8"))
    lines = _PACEMAKER.compute(cib, now).summary_lines()
    (directory / "expected.txt").write_text("\n".join(lines) + "\n")
    (directory / "description.txt").write_text(description.strip() + "\n")


# -- the runner --------------------------------------------------------------------------
def case(seed: int, index: int) -> tuple[etree._Element, datetime]:
    """Case ``index`` of ``seed``: reproducible on its own."""
    return generate(random.Random(f"{seed}:{index}"))


@dataclass
class Report:
    cases: int = 0
    agreed_in_row: int = 0
    best_row: int = 0
    refused: int = 0
    disagreements: int = 0


def fuzz(seed: int, cases: int, *, start: int = 0, keep_going: bool = False,
         out: Path | None = None, log: Callable[[str], None] = print) -> Report:
    """Run ``cases`` cases of ``seed``; shrink and write each disagreement to ``out``."""
    report = Report()
    for index in range(start, start + cases):
        cib, now = case(seed, index)
        outcome = run_both(cib, now)
        report.cases += 1
        if outcome.refused:
            report.refused += 1
        if outcome.agree:
            report.agreed_in_row += 1
            report.best_row = max(report.best_row, report.agreed_in_row)
            if report.cases % 1000 == 0:
                log(f"seed {seed}: {report.cases} cases, {report.disagreements} "
                    f"disagreements, {report.agreed_in_row} agreeing in a row, "
                    f"{report.refused} refused by native")
            continue
        report.disagreements += 1
        report.agreed_in_row = 0
        log(f"seed {seed} case {index}: engines disagree")
        if out is not None:
            small = shrink(cib, now)
            diff = run_both(small, now).difference()
            target = out / f"fuzz-{seed}-{index}"
            write_scenario(target, small, now,
                           f"found by `python -m tests.fuzz_transition --seed {seed} "
                           f"--case {index}` (shrunk); native differed:\n" + "\n".join(diff))
            log(f"  shrunk to {target}:")
            for line in diff:
                log(f"    {line}")
        if not keep_going:
            break
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--case", type=int, help="run this one case only")
    parser.add_argument("--show", action="store_true", help="print both summaries")
    parser.add_argument("--keep-going", action="store_true", help="do not stop at a mismatch")
    parser.add_argument("--out", type=Path, default=Path("/tmp/pcloud-fuzz"),
                        help="where shrunk disagreements are written as scenario folders")
    args = parser.parse_args(argv)
    if args.case is not None:
        cib, now = case(args.seed, args.case)
        outcome = run_both(cib, now)
        if args.show:
            sys.stdout.write(etree.tostring(cib, pretty_print=True, encoding="unicode"))
            print("pacemaker:", *outcome.pacemaker, sep="\n  ")
            print("native:", *(outcome.native or [f"refused: {outcome.refused}"]), sep="\n  ")
        print("\n".join(outcome.difference()) or "agree")
        return 0 if outcome.agree else 1
    began = time.monotonic()
    report = fuzz(args.seed, args.cases, start=args.start, keep_going=args.keep_going,
                  out=args.out)
    print(f"seed {args.seed}: {report.cases} cases from {args.start}, "
          f"{report.disagreements} disagreements, longest agreeing run {report.best_row}, "
          f"{report.refused} refused by native, {time.monotonic() - began:.0f}s")
    return 0 if report.disagreements == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
