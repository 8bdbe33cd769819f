"""The DPE's ``seq`` floor comes from its command line (``--seq-floor``), never from another
process writing its database; the shared exit codes; the signal-safe main queue."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from dpe_agent import cli
from dpe_agent.store import DpeStore
from pcloud import exitcodes


def _event(seq: int):
    return f'<event seq="{seq}"/>', "2026-01-01T00:00:00.000Z", "config_error", None, None


def test_the_floor_raises_the_counter_and_never_lowers_it(tmp_path: Path) -> None:
    store = DpeStore(tmp_path / "dpe.sqlite")
    try:
        assert store.raise_seq(0) == 0
        assert store.raise_seq(7) == 7
        assert store.add_event(_event)[0] == 8
        assert store.raise_seq(3) == 8          # below what it numbered: kept
        assert store.add_event(_event)[0] == 9
        assert store.last_seq() == 9
    finally:
        store.close()


def test_dped_takes_a_seq_floor_argument() -> None:
    assert cli.parse_args(["--deployable", "d.xml"]).seq_floor == 0
    assert cli.parse_args(["--deployable", "d.xml", "--seq-floor", "41"]).seq_floor == 41
    for bad in ("-1", "x", str(2**63)):
        with pytest.raises(SystemExit) as exc:
            cli.parse_args(["--deployable", "d.xml", "--seq-floor", bad])
        assert exc.value.code == exitcodes.EXIT_CONFIG


def test_dped_and_the_cpe_share_the_exit_codes() -> None:
    assert (cli.EXIT_CONFIG, cli.EXIT_BUS, cli.EXIT_FAILED) == \
        (exitcodes.EXIT_CONFIG, exitcodes.EXIT_BUS, exitcodes.EXIT_FAILED)
    assert exitcodes.describe(2) == "exit 2 (configuration error)"
    assert exitcodes.describe(-9) == "signal 9"
    assert exitcodes.describe(None) == "exit status unknown"


def test_the_supervisor_no_longer_touches_the_dpe_database() -> None:
    source = (Path(__file__).parent.parent / "cpe_agent" / "supervisor.py").read_text()
    assert "DpeStore" not in source and "dpe.sqlite" not in source


def test_the_dpe_main_queue_is_a_simple_queue() -> None:
    source = (Path(__file__).parent.parent / "dpe_agent" / "daemon.py").read_text()
    assert "queue.SimpleQueue()" in source and "queue.Queue()" not in source
    q: queue.SimpleQueue = queue.SimpleQueue()    # what the loop relies on
    q.put(("signal", 15))
    assert q.get(timeout=0.1) == ("signal", 15)
    with pytest.raises(queue.Empty):
        q.get_nowait()
