"""Native transition computer vs Pacemaker's crm_simulate on the same generated CIBs.

    python bench/transition.py [--runs 20] [--sizes 10,100,1000]

For each size (resources; 10 per assembly, each assembly's services in a Mandatory chain and
every assembly after the previous one's first service) two CIBs are built through
pcloud's CIB builder: ``fresh`` (nothing known yet) and ``mixed`` (settled, then a few failed
monitors and one lost assembly). Prints median and p99 per engine, the speed ratio, and
whether both engines gave the same actions and orderings. Goal: native >= 10x at 100.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lxml import etree  # noqa: E402

from dpe_agent.cib import build_cib  # noqa: E402
from dpe_agent.engines import get_engine  # noqa: E402
from dpe_agent.engines.pacemaker import crm_simulate_path  # noqa: E402
from dpe_agent.observed import ObservedState  # noqa: E402

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
PER_ASSEMBLY = 10


def deployable(resources: int) -> etree._Element:
    root = etree.Element("deployable", name="bench", uuid="bench-0")
    asms = etree.SubElement(root, "assemblies")
    cons = etree.SubElement(root, "constraints")
    count = max(1, resources // PER_ASSEMBLY)
    for a in range(count):
        asm = etree.SubElement(asms, "assembly", name=f"asm{a}", uuid=f"uuid-asm{a}")
        svcs = etree.SubElement(asm, "services")
        for s in range(min(PER_ASSEMBLY, resources)):
            svc = etree.SubElement(svcs, "service", name=f"svc{s}", type="Dummy",
                                   provider="heartbeat", monitor_interval="5",
                                   escalation_failures="3", escalation_period="600")
            svc.set("class", "ocf")
            params = etree.SubElement(svc, "parameters")
            etree.SubElement(params, "parameter", name="state", value=f"/run/{a}-{s}")
            if s:
                etree.SubElement(cons, "service_dependency", id=f"d{a}-{s}",
                                 first=f"asm{a}:svc{s - 1}", then=f"asm{a}:svc{s}")
        if a:
            etree.SubElement(cons, "service_dependency", id=f"x{a}",
                             first=f"asm{a - 1}:svc0", then=f"asm{a}:svc0")
    return root


def online(dep: etree._Element) -> ObservedState:
    obs = ObservedState()
    for name in dep.xpath("assemblies/assembly/@name"):
        obs.set_online(name)
    return obs


def settle(dep: etree._Element, obs: ObservedState) -> None:
    engine = get_engine("native")
    when = NOW - timedelta(hours=1)
    for _ in range(5):
        graph = engine.compute(build_cib(dep, obs, now=when), when)
        if not len(graph):
            return
        for action in graph.actions:
            obs.record(action, action.target_rc, now=when)


def cibs(resources: int) -> dict[str, etree._Element]:
    dep = deployable(resources)
    fresh = build_cib(dep, online(dep), now=NOW)
    obs = online(dep)
    settle(dep, obs)
    names = dep.xpath("assemblies/assembly/@name")
    for i, name in enumerate(names):
        if i % 3 == 0:
            obs.report_monitor(name, f"{name}.svc{PER_ASSEMBLY // 2}", 5000, 7,
                               now=NOW - timedelta(seconds=30))
    if len(names) > 1:
        obs.set_lost(names[-1])
    return {"fresh": fresh, "mixed": build_cib(dep, obs, now=NOW)}


def timed(engine, cib, runs: int):
    samples, graph = [], None
    for _ in range(runs):
        start = time.perf_counter()
        graph = engine.compute(cib, NOW)
        samples.append(time.perf_counter() - start)
    return samples, graph


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="native vs crm_simulate transition timing")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sizes", default="10,100,1000")
    args = parser.parse_args(argv)
    has_crm = crm_simulate_path() is not None
    native, pacemaker = get_engine("native"), get_engine("pacemaker")
    print(f"{'size':>5} {'case':6} {'native med':>11} {'p99':>9} {'crm_sim med':>12} "
          f"{'p99':>9} {'ratio':>7} {'actions':>7}  agree")
    for size in (int(s) for s in args.sizes.split(",")):
        for case, cib in cibs(size).items():
            n_samples, n_graph = timed(native, cib, args.runs)
            n_med = statistics.median(n_samples)
            line = f"{size:>5} {case:6} {n_med * 1000:>9.2f}ms {p99(n_samples) * 1000:>7.2f}ms"
            if has_crm:
                runs = max(3, args.runs // 4) if size >= 1000 else args.runs
                p_samples, p_graph = timed(pacemaker, cib, runs)
                p_med = statistics.median(p_samples)
                agree = n_graph.normalized() == p_graph.normalized() and \
                    n_graph.recheck_by == p_graph.recheck_by
                line += (f" {p_med * 1000:>10.2f}ms {p99(p_samples) * 1000:>7.2f}ms "
                         f"{p_med / n_med:>6.1f}x {len(n_graph):>7}  {'yes' if agree else 'NO'}")
            else:
                line += "   (crm_simulate not installed: apt-get install pacemaker-cli-utils)"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
