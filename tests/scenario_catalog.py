"""The differential scenarios, one function each (see tests/scenario_defs.py)."""

from __future__ import annotations

from datetime import timedelta

from tests.scenario_defs import (
    EARLIER,
    NOW,
    Svc,
    deployable,
    fail_monitor,
    online,
    running,
    scenario,
)


def two_tier(**kw):
    db = Svc("mysqld", params={"config": "/etc/mysql/my.cnf"}, **kw)
    web = Svc("httpd", cls="process", monitor=2, params={"command": "python3 -m http.server"})
    return {"db": [db], "web": [web]}


def web_tier(kind: str = "Mandatory", **kw):
    return deployable(two_tier(**kw), [("db:mysqld", "web:httpd", kind)])


@scenario("fresh-start-one-service",
          "one assembly, one service, nothing known: probe, start, monitor")
def _fresh_one():
    return deployable({"a": [Svc("svc")]}), online("a")


@scenario("fresh-start-mandatory-across-assemblies",
          "db before web across assemblies: web starts after db's start")
def _fresh_mandatory():
    return web_tier(), online("db", "web")


@scenario("fresh-start-chain-of-three", "a -> b -> c mandatory chain over two assemblies")
def _fresh_chain():
    dep = deployable({"x": [Svc("a"), Svc("b")], "y": [Svc("c")]},
                     [("x:a", "x:b"), ("x:b", "y:c")])
    return dep, online("x", "y")


@scenario("fresh-start-optional-order", "an Optional order still orders the starts")
def _fresh_optional():
    return web_tier("Optional"), online("db", "web")


@scenario("fresh-start-resource-classes", "ocf, lsb, systemd and process services start alike")
def _fresh_classes():
    dep = deployable({"m": [Svc("o"), Svc("l", cls="lsb", type="cron"),
                            Svc("s", cls="systemd", type="nginx"),
                            Svc("p", cls="process", params={"command": "sleep 1000"})]})
    return dep, online("m")


@scenario("fresh-start-partial-membership",
          "one assembly not launched yet (down): only the other one's services start")
def _fresh_partial():
    return deployable(two_tier()), online("db")


@scenario("steady-state-no-actions", "everything running with matching digests: empty graph")
def _steady():
    dep = web_tier()
    return dep, running(dep)


@scenario("steady-state-escaped-parameters",
          "parameters with & < > \" ' TAB and newline keep their digest: no restart")
def _steady_escaped():
    params = {"cmd": "a && b < c > d \"q\" 'x'", "tab": "x\ty", "nl": "line1\nline2"}
    dep = deployable({"a": [Svc("svc", params=params)]})
    return dep, running(dep)


@scenario("steady-state-non-ascii-parameter",
          "a non-ASCII parameter value (Pacemaker stops escaping after it): no restart")
def _steady_utf8():
    dep = deployable({"a": [Svc("svc", params={"greeting": "héllo 'wörld'", "x": "a&b"})]})
    return dep, running(dep)


@scenario("probe-found-running", "a probe found the service running: only its monitor starts")
def _probe_running():
    dep = deployable({"a": [Svc("svc")]})
    obs = online("a")
    obs.record_op("a", "a.svc", "ocf", "Dummy", "monitor", 0, 0, provider="heartbeat",
                  now=EARLIER)
    return dep, obs


@scenario("probe-found-running-at-threshold-one",
          "a probe found the service running with escalation_failures=1: not a failure, "
          "only its monitor starts")
def _probe_running_threshold():
    dep = deployable({"a": [Svc("svc", failures=1)]})
    obs = online("a")
    obs.record_op("a", "a.svc", "ocf", "Dummy", "monitor", 0, 0, provider="heartbeat",
                  now=EARLIER)
    return dep, obs


@scenario("monitor-failed-restart", "a failed recurring monitor: stop, start, monitor")
def _mon_failed():
    dep = deployable({"a": [Svc("svc")]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc")
    return dep, obs


@scenario("monitor-failed-generic-error", "a monitor failing with rc 1 recovers like rc 7")
def _mon_failed_rc1():
    dep = deployable({"a": [Svc("svc")]})
    obs = running(dep)
    obs.report_monitor("a", "a.svc", 5000, 1, now=NOW - timedelta(seconds=5))
    return dep, obs


@scenario("monitor-failed-first-restarts-mandatory-then",
          "db fails under a Mandatory order: web stops first, both restart in order")
def _mon_first_mandatory():
    dep = web_tier()
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    return dep, obs


@scenario("monitor-failed-then-restarts-only-then",
          "web (the dependent) fails: only web restarts")
def _mon_then():
    dep = web_tier()
    obs = running(dep)
    fail_monitor(obs, "web", "httpd", interval_ms=2000)
    return dep, obs


@scenario("monitor-failed-first-optional-restarts-only-first",
          "db fails under an Optional order: only db restarts")
def _mon_first_optional():
    dep = web_tier("Optional")
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    return dep, obs


@scenario("monitor-failed-middle-of-chain", "b fails in a -> b -> c: b and c restart")
def _mon_chain():
    dep = deployable({"x": [Svc("a"), Svc("b")], "y": [Svc("c")]},
                     [("x:a", "x:b"), ("x:b", "y:c")])
    obs = running(dep)
    fail_monitor(obs, "x", "b")
    return dep, obs


@scenario("start-failed-restart", "a start failed (rc 1): stop, start again, monitor")
def _start_failed():
    dep = deployable({"a": [Svc("svc")]})
    obs = online("a")
    obs.record_op("a", "a.svc", "ocf", "Dummy", "monitor", 0, 7, provider="heartbeat",
                  now=EARLIER)
    obs.record_op("a", "a.svc", "ocf", "Dummy", "start", 0, 1, provider="heartbeat",
                  now=NOW - timedelta(seconds=20))
    return dep, obs


@scenario("migration-threshold-reached-stops-resource",
          "third failure with escalation_failures=3: stopped, not restarted")
def _threshold():
    dep = deployable({"a": [Svc("svc", failures=3)]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc", times=3)
    return dep, obs


@scenario("migration-threshold-not-reached-restarts",
          "second failure with escalation_failures=3: restarted")
def _below_threshold():
    dep = deployable({"a": [Svc("svc", failures=3)]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc", times=2)
    return dep, obs


@scenario("migration-threshold-reached-stops-mandatory-dependent",
          "db reaches its threshold: db and its Mandatory dependent web stop")
def _threshold_dep():
    dep = web_tier(failures=1)
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    return dep, obs


@scenario("failure-timeout-expired-clears-failcount",
          "failures older than escalation_period: fail count cleared, service started again",
          )
def _expired():
    dep = deployable({"a": [Svc("svc", failures=2, period=600)]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc", times=2, when=NOW - timedelta(seconds=900))
    return dep, obs


@scenario("failure-timeout-unexpired-sets-recheck",
          "a recent failure below the threshold: restart, graph rechecks at expiry")
def _unexpired():
    dep = deployable({"a": [Svc("svc", failures=3, period=600)]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc", when=NOW - timedelta(seconds=100))
    return dep, obs


@scenario("failure-timeout-unexpired-at-threshold",
          "threshold reached recently: stopped until the failures expire (recheck-by)")
def _unexpired_threshold():
    dep = deployable({"a": [Svc("svc", failures=2, period=600)]})
    obs = running(dep)
    fail_monitor(obs, "a", "svc", times=2, when=NOW - timedelta(seconds=100))
    return dep, obs


@scenario("assembly-lost-fenced", "a lost assembly is fenced; its services stop implicitly")
def _lost():
    dep = deployable({"a": [Svc("s1"), Svc("s2")], "b": [Svc("t")]})
    obs = running(dep)
    obs.set_lost("a")
    return dep, obs


@scenario("assembly-lost-dependent-elsewhere-stops",
          "db's assembly is lost: fence it, and web (Mandatory dependent) stops first")
def _lost_dep():
    dep = web_tier()
    obs = running(dep)
    obs.set_lost("db")
    return dep, obs


@scenario("two-assemblies-lost-fenced-in-turn",
          "two lost assemblies are fenced one after the other")
def _two_lost():
    dep = deployable({"a": [Svc("s")], "b": [Svc("t")], "c": [Svc("u")]})
    obs = running(dep)
    obs.set_lost("a")
    obs.set_lost("b")
    return dep, obs


@scenario("assembly-lost-starts-wait-for-fencing",
          "a lost assembly while another starts fresh: every start waits for the fence")
def _lost_starts():
    dep = deployable({"a": [Svc("s")], "b": [Svc("t"), Svc("u")]})
    obs = running(deployable({"a": [Svc("s")], "b": []}))
    obs.set_lost("a")
    obs.set_online("b")
    return dep, obs


@scenario("assembly-fenced-services-stay-stopped",
          "a fenced (expected down) assembly: its services stay stopped, nothing to do")
def _fenced():
    dep = deployable({"a": [Svc("s")], "b": [Svc("t")]})
    obs = running(dep)
    obs.set_fenced("a")
    return dep, obs


@scenario("assembly-fenced-dependent-not-started",
          "db's assembly is down: web (Mandatory dependent) is not started")
def _fenced_dep():
    dep = web_tier()
    obs = online("web")
    obs.set_fenced("db")
    return dep, obs


@scenario("assembly-rejoined-empty-history-probes",
          "an assembly back with an empty history: its services are probed then started")
def _rejoined():
    dep = deployable({"a": [Svc("s1"), Svc("s2")], "b": [Svc("t")]})
    obs = running(dep)
    obs.rejoined("a")
    return dep, obs


@scenario("assembly-rejoined-running-dependent-waits-for-probes",
          "db rejoins empty while web runs: web's stop waits for db's probe, then both start")
def _rejoined_dep():
    dep = web_tier()
    obs = running(dep)
    obs.rejoined("db")
    return dep, obs


@scenario("parameter-changed-restart",
          "a changed parameter (digest mismatch): stop, start, monitor")
def _param_changed():
    old = deployable({"a": [Svc("svc", params={"port": "80"})]})
    obs = running(old)
    return deployable({"a": [Svc("svc", params={"port": "8080"})]}), obs


@scenario("parameter-changed-first-restarts-dependent",
          "db's parameters change: db restarts and its Mandatory dependent web too")
def _param_changed_dep():
    obs = running(web_tier())
    dep = deployable({"db": [Svc("mysqld", params={"config": "/etc/mysql/other.cnf"})],
                      "web": two_tier()["web"]}, [("db:mysqld", "web:httpd")])
    return dep, obs


@scenario("monitor-interval-changed",
          "a changed monitor interval: cancel old, new monitor, no restart")
def _interval_changed():
    obs = running(deployable({"a": [Svc("svc", monitor=5)]}))
    return deployable({"a": [Svc("svc", monitor=10)]}), obs


@scenario("orphan-running-stop-and-delete",
          "a running service removed from the deployable: stop, delete")
def _orphan():
    obs = running(deployable({"a": [Svc("svc"), Svc("gone")]}))
    return deployable({"a": [Svc("svc")]}), obs


@scenario("orphan-stopped", "a stopped service removed from the deployable")
def _orphan_stopped():
    dep_old = deployable({"a": [Svc("svc"), Svc("gone")]})
    obs = running(dep_old)
    obs.record_op("a", "a.gone", "ocf", "Dummy", "stop", 0, 0, provider="heartbeat", now=EARLIER)
    return deployable({"a": [Svc("svc")]}), obs


@scenario("failed-stop-fences-assembly",
          "a stop failed (fail-count INFINITY): the assembly is fenced")
def _failed_stop():
    dep = deployable({"a": [Svc("svc"), Svc("other")], "b": [Svc("t")]})
    obs = running(dep)
    obs.record_op("a", "a.svc", "ocf", "Dummy", "stop", 0, 1, provider="heartbeat",
                  now=NOW - timedelta(seconds=10))
    return dep, obs


@scenario("service-added-to-running-deployable",
          "a new service on a running assembly: probe, start")
def _added():
    obs = running(deployable({"a": [Svc("svc")]}))
    return deployable({"a": [Svc("svc"), Svc("new")]}, [("a:svc", "a:new")]), obs


@scenario("dependency-added-between-running", "a new order between running services: nothing to do")
def _dep_added():
    obs = running(deployable(two_tier()))
    return web_tier(), obs


@scenario("mixed-failure-lost-and-fresh",
          "one failed monitor, one lost assembly and one fresh assembly in one transition")
def _mixed():
    full = {"a": [Svc("s1"), Svc("s2")], "b": [Svc("t1")], "c": [Svc("u1"), Svc("u2")]}
    deps = [("a:s1", "a:s2"), ("a:s2", "c:u1")]
    obs = running(deployable({"a": full["a"], "b": full["b"], "c": []}, deps[:1]))
    fail_monitor(obs, "a", "s1")
    obs.set_lost("b")
    obs.set_online("c")
    return deployable(full, deps), obs




@scenario("two-assemblies-lost-starts-wait-for-both",
          "two lost assemblies and a fresh service: the start waits for both fences")
def _two_lost_starts():
    dep = deployable({"a": [Svc("s")], "b": [Svc("t")], "c": [Svc("u")]})
    obs = running(deployable({"a": [Svc("s")], "b": [Svc("t")], "c": []}))
    obs.set_lost("a")
    obs.set_lost("b")
    obs.set_online("c")
    return dep, obs


@scenario("lost-assemblies-fenced-in-natural-order",
          "assemblies n10 and n2 lost: fenced in natural name order (n2 first)")
def _natural():
    dep = deployable({"n10": [Svc("s")], "n2": [Svc("t")], "n3": [Svc("u")]})
    obs = running(dep)
    obs.set_lost("n10")
    obs.set_lost("n2")
    return dep, obs


@scenario("assembly-rejoined-optional-dependent-keeps-running",
          "db rejoins empty under an Optional order: web keeps running, db is probed, started")
def _rejoined_optional():
    dep = web_tier("Optional")
    obs = running(dep)
    obs.rejoined("db")
    return dep, obs


@scenario("parameter-changed-after-failure",
          "parameters change on a resource with a recorded failure: fail count cleared, restart")
def _param_after_failure():
    old = deployable({"a": [Svc("svc", params={"port": "80"}, failures=5)]})
    obs = running(old)
    fail_monitor(obs, "a", "svc")
    return deployable({"a": [Svc("svc", params={"port": "81"}, failures=5)]}), obs


@scenario("recovered-with-recent-failure-rechecks",
          "restarted after a recent failure: nothing to do, recheck when the failure expires")
def _recovered_recheck():
    dep = deployable({"a": [Svc("svc", failures=3, period=600)]})
    obs = running(dep)
    when = NOW - timedelta(seconds=200)
    fail_monitor(obs, "a", "svc", when=when)
    from tests.scenario_defs import settle
    settle(dep, obs, when)
    return dep, obs


@scenario("start-failed-at-threshold", "a start failed with escalation_failures=1: stopped only")
def _start_failed_threshold():
    dep = deployable({"a": [Svc("svc", failures=1)]})
    obs = online("a")
    obs.record_op("a", "a.svc", "ocf", "Dummy", "monitor", 0, 7, provider="heartbeat",
                  now=EARLIER)
    obs.record_op("a", "a.svc", "ocf", "Dummy", "start", 0, 1, provider="heartbeat",
                  now=NOW - timedelta(seconds=20))
    return dep, obs


@scenario("dependent-lost-while-first-restarts",
          "web's assembly is lost while db fails: fence web, restart db after web's implied stop")
def _then_lost():
    dep = web_tier()
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    obs.set_lost("web")
    return dep, obs


@scenario("orphan-on-lost-assembly", "a removed service on a lost assembly: fence, implied stop")
def _orphan_lost():
    obs = running(deployable({"a": [Svc("svc"), Svc("gone")], "b": [Svc("t")]}))
    obs.set_lost("a")
    return deployable({"a": [Svc("svc")], "b": [Svc("t")]}), obs


@scenario("monitor-failed-with-two-dependents",
          "db fails with two Mandatory dependents on two assemblies: all three restart")
def _two_dependents():
    dep = deployable({"db": [Svc("mysqld")], "w1": [Svc("httpd")], "w2": [Svc("httpd")]},
                     [("db:mysqld", "w1:httpd"), ("db:mysqld", "w2:httpd")])
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    return dep, obs


@scenario("fresh-start-diamond", "a diamond of Mandatory orders: a before b and c, both before d")
def _diamond():
    dep = deployable({"x": [Svc("a"), Svc("b")], "y": [Svc("c"), Svc("d")]},
                     [("x:a", "x:b"), ("x:a", "y:c"), ("x:b", "y:d"), ("y:c", "y:d")])
    return dep, online("x", "y")


@scenario("monitor-failed-while-dependent-down",
          "db fails while web's assembly is down: db restarts alone")
def _dep_down():
    dep = web_tier()
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    obs.set_fenced("web")
    return dep, obs


@scenario("stop-all-reverse-dependency-order",
          "the DPE's stop graph over a running chain: c, then b, then a stop", stop_all=True)
def _stop_chain():
    dep = deployable({"x": [Svc("a"), Svc("b")], "y": [Svc("c")]},
                     [("x:a", "x:b"), ("x:b", "y:c")])
    return dep, running(dep)


@scenario("stop-all-failed-and-optional",
          "stop graph with a failed db under an Optional order: both stop, nothing restarts",
          stop_all=True)
def _stop_failed():
    dep = web_tier("Optional")
    obs = running(dep)
    fail_monitor(obs, "db", "mysqld")
    return dep, obs


@scenario("stop-all-unknown-history-probes",
          "stop graph while web rejoined empty: web is probed, db's stop waits for the probe",
          stop_all=True)
def _stop_probe():
    dep = web_tier()
    obs = running(dep)
    obs.rejoined("web")
    return dep, obs
