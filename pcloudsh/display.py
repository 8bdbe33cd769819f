"""How pcloudsh shows things: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from lxml import etree

Columns = Sequence[tuple[str, str]]


def table(rows: Sequence[dict[str, Any]], columns: Columns) -> str:
    """Rows as a left-aligned table with a header and a rule, one row per line."""
    headers = [title for _key, title in columns]
    cells = [["" if row.get(key) is None else str(row.get(key)) for key, _t in columns]
             for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    if not rows:
        out.append("(none)")
    return "\n".join(out)


def as_json(rows: Any) -> str:
    return json.dumps(rows, indent=2, sort_keys=True)


STATUS_COLUMNS: Columns = (("assembly", "ASSEMBLY"), ("resource", "RESOURCE"),
                           ("state", "STATE"), ("fail_count", "FAILS"),
                           ("last_failure", "LAST FAILURE"), ("reason", "REASON"))


def status_rows(status: etree._Element) -> list[dict[str, Any]]:
    """Flatten a ``deployable_status`` result: one row per assembly, then its resources."""
    rows: list[dict[str, Any]] = []
    for assembly in status.iter("assembly"):
        rows.append({"assembly": assembly.get("name"), "resource": "-",
                     "state": assembly.get("state"),
                     "fail_count": int(assembly.get("fail_count", "0")),
                     "last_failure": assembly.get("last_failure"),
                     "reason": assembly.get("reason")})
        for resource in assembly.iter("resource"):
            rows.append({"assembly": assembly.get("name"), "resource": resource.get("name"),
                         "state": resource.get("state"),
                         "fail_count": int(resource.get("fail_count", "0")),
                         "last_failure": resource.get("last_failure"),
                         "reason": resource.get("reason")})
    return rows


def status_text(status: etree._Element) -> str:
    """The operator's view of a deployable: a headline, then the assembly/resource table."""
    head = f"deployable {status.get('name')}: {status.get('state')}"
    if status.get("reason"):
        head += f" ({status.get('reason')})"
    return head + "\n" + table(status_rows(status), STATUS_COLUMNS)


def status_json(status: etree._Element) -> dict[str, Any]:
    return {"name": status.get("name"), "state": status.get("state"),
            "reason": status.get("reason"), "components": status_rows(status)}
