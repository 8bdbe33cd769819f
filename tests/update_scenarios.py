"""Regenerate the differential scenarios for review (like Pacemaker's cts ``--update``).

    python -m tests.update_scenarios            # expected.txt from crm_simulate
    python -m tests.update_scenarios --cibs     # also rebuild cib.xml (scenario_catalog)
    python -m tests.update_scenarios --run NAME # one scenario only
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from dpe_agent.engines import get_engine

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


def scenario_dirs(name: str | None = None) -> list[Path]:
    """Every scenario directory (found by glob: a directory holding cib.xml)."""
    dirs = sorted(p.parent for p in SCENARIO_DIR.glob("*/cib.xml"))
    return [d for d in dirs if name is None or d.name == name]


def load_cib(directory: Path) -> tuple[etree._Element, datetime]:
    """A scenario's CIB and its "now" (the CIB's execution-date)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    cib = etree.parse(str(directory / "cib.xml"), parser).getroot()
    return cib, datetime.fromtimestamp(int(cib.get("execution-date")), UTC)


def expected_text(cib: etree._Element, now: datetime, engine: str = "pacemaker") -> str:
    graph = get_engine(engine).compute(cib, now)
    return "\n".join(graph.summary_lines()) + "\n"


def write_cibs(only: str | None) -> None:
    import tests.scenario_catalog  # noqa: F401  (registers the scenarios)
    from tests.scenario_defs import SCENARIOS, cib_for

    for sc in SCENARIOS:
        if only and sc.name != only:
            continue
        directory = SCENARIO_DIR / sc.name
        directory.mkdir(parents=True, exist_ok=True)
        cib = cib_for(sc)
        (directory / "cib.xml").write_bytes(
            etree.tostring(cib, pretty_print=True, xml_declaration=True, encoding="UTF-8"))
        (directory / "description.txt").write_text(sc.description + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cibs", action="store_true", help="rebuild cib.xml from the catalog")
    parser.add_argument("--run", metavar="NAME", help="only this scenario")
    args = parser.parse_args(argv)
    if args.cibs:
        write_cibs(args.run)
    for directory in scenario_dirs(args.run):
        cib, now = load_cib(directory)
        (directory / "expected.txt").write_text(expected_text(cib, now))
        print(f"updated {directory.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
