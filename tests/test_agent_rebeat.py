"""The guest agent beats again shortly after a reconnect (guest_agent.heartbeat.REBEATS).

When the broker comes back every client reconnects at the same moment; the beat an agent
sends at once may go out before its DPE has re-attached the heartbeat subscription, and is
then routed nowhere. The DPE, waiting for a beat to end its mass loss and re-probe, used to
get the next one a whole interval later. Real broker: the DPE's subscription is attached
only after the agent's reconnect beat, as in that race.
"""

from __future__ import annotations

import time
import uuid

from guest_agent.heartbeat import REBEATS, Heartbeater
from pcloud.bus import Bus

INTERVAL = 5.0     # the periodic beat is far away: only a re-beat can arrive in time


def test_a_dpe_listening_just_after_the_reconnect_gets_a_beat_within_a_second(broker,
                                                                             wait_until):
    agent_bus = Bus(broker.url, name="test-rebeat-agent").start(timeout=30)
    dpe_bus = Bus(broker.url, name="test-rebeat-dpe").start(timeout=30)
    key = f"pcloud.heartbeat.rb{uuid.uuid4().hex[:8]}.a1"
    beats = Heartbeater(agent_bus.publish, key, {"deployable": "rb", "assembly": "a1"},
                        INTERVAL, dict, lambda: "2026-01-01T00:00:00Z")
    try:
        beats.start()                    # a periodic beat now, the next one in 5 s
        time.sleep(0.3)
        beats.after_reconnect()          # what the agent's bus runs on a reconnect
        reconnected = time.monotonic()
        received: list[float] = []
        subscription = dpe_bus.subscribe(key, lambda msg: received.append(time.monotonic()))
        assert subscription.wait_attached(5)
        wait_until(lambda: received, timeout=INTERVAL, what="a heartbeat")
        assert received[0] - reconnected < max(REBEATS) + 0.5
    finally:
        beats.stop()
        dpe_bus.close()
        agent_bus.close()
