"""The no-Docker topology runner: compose interpolation, localisation of services, supervision."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from frontdesk.errors import ConfigError, TopologyError
from frontdesk.topology import LocalServices, StageProcess, Topology, interpolate, load_compose
from frontdesk.settings import check_environment
from frontdesk.settings_doc import settings_classes
from frontdesk.topology.__main__ import DATABASE_URL_ENV, database_url, main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENDPOINTS = {"kafka": "127.0.0.1:19092", "postgres": "postgresql+psycopg://fd@127.0.0.1:15432/cases",
             "smtp": ("127.0.0.1", 12525)}


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${A}", {"A": "x"}, "x"),
    ("$A/b", {"A": "x"}, "x/b"),
    ("${A:-d}", {}, "d"),
    ("${A:-d}", {"A": ""}, "d"),
    ("${A-d}", {"A": ""}, ""),
    ("${A:+r}", {"A": "x"}, "r"),
    ("${A:+r}", {}, ""),
    ("$${A}", {"A": "x"}, "${A}"),
    ('${T:-["a", "b"]}', {}, '["a", "b"]'),
    ("${A:-${B:-z}}", {}, "z"),
    ("u:${P:-pw}@h", {"P": "s3"}, "u:s3@h"),
])
def test_interpolation_follows_compose(text: str, env: dict[str, str], expected: str) -> None:
    assert interpolate(text, env) == expected


def test_a_missing_required_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="TOKEN is required: set it"):
        interpolate("${TOKEN:?set it}", {})


def local(tmp_path: Path, endpoints: dict | None = None, **environ: str) -> LocalServices:  # type: ignore[type-arg]
    return LocalServices(load_compose(COMPOSE, environ), ROOT, tmp_path, ENDPOINTS if endpoints is None else endpoints,
                         environ={"PATH": "/usr/bin", **environ})


def test_dispatch_talks_to_the_given_servers_and_local_paths(tmp_path: Path) -> None:
    env = local(tmp_path, FRONTDESK_DISPATCH_GROUP="leaks").env("dispatch", 0)
    assert env["FRONTDESK_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["FRONTDESK_DISPATCH_DATABASE_URL"] == ENDPOINTS["postgres"]
    assert (env["FRONTDESK_SMTP_HOST"], env["FRONTDESK_SMTP_PORT"]) == ("127.0.0.1", "12525")
    assert env["FRONTDESK_DISPATCH_ROUTING_FILE"] == str(ROOT / "config" / "routing.yaml")
    assert env["FRONTDESK_CONFIG"] == str(ROOT / "config" / "frontdesk.yaml")
    assert env["FRONTDESK_STORAGE_DATA_DIR"] == str(tmp_path / "volumes" / "frontdesk-data")
    assert env["FRONTDESK_METRICS_HOST"] == "127.0.0.1" and env["PATH"] == "/usr/bin"
    assert "FRONTDESK_DISPATCH_GROUP" not in env, "the runner's own FRONTDESK_* variables must not leak in"
    assert not [v for v in env.values() if "mailpit" in v or "postgres:" in v or "kafka:" in v]


def test_replicas_get_their_own_ports_and_client_ids(tmp_path: Path) -> None:
    services = local(tmp_path)
    envs = [services.env("classify", i) for i in range(3)] + [services.env("dispatch", 0)]
    assert len({e["FRONTDESK_METRICS_PORT"] for e in envs}) == 4
    assert [e["FRONTDESK_KAFKA_CLIENT_ID"] for e in envs[:2]] == ["frontdesk-classify-0", "frontdesk-classify-1"]
    assert envs[0]["FRONTDESK_CLASSIFIER_CACHE_DIR"] == str(tmp_path / "volumes" / "model-cache")


def test_secrets_pass_through_from_the_environment_only_where_compose_lists_them(tmp_path: Path) -> None:
    services = local(tmp_path, FRONTDESK_HTTP_HMAC_SECRET="from-the-shell", FRONTDESK_HTTP_API_TOKENS='["t" ]')
    http = services.env("ingest-http", 0)
    assert http["FRONTDESK_HTTP_HMAC_SECRET"] == "from-the-shell"
    assert http["FRONTDESK_HTTP_API_TOKENS"] == '["t" ]', "interpolated from the environment like compose"
    assert "FRONTDESK_HTTP_META_APP_SECRET" not in http, "unset pass-through variables stay unset"
    assert "FRONTDESK_HTTP_HMAC_SECRET" not in services.env("classify", 0)


def test_missing_endpoints(tmp_path: Path) -> None:
    no_smtp = local(tmp_path, {k: v for k, v in ENDPOINTS.items() if k != "smtp"}).env("dispatch", 0)
    assert "FRONTDESK_SMTP_HOST" not in no_smtp and "FRONTDESK_SMTP_PORT" not in no_smtp
    with pytest.raises(ConfigError, match="needs postgres"):
        local(tmp_path, {"kafka": "127.0.0.1:1"}).env("dispatch", 0)
    with pytest.raises(ConfigError, match="not a frontdesk service.*postgres"):
        local(tmp_path).select(["classify", "postgres"])
    assert local(tmp_path).select(None) == ["ingest-imap", "ingest-http", "classify", "dispatch"]


def test_from_compose_builds_replicas_and_logs(tmp_path: Path) -> None:
    topo = Topology.from_compose(COMPOSE, ENDPOINTS, services=["classify", "dispatch"], replicas={"classify": 2},
                                 state_dir=tmp_path, env_extra={"FRONTDESK_LOG_LEVEL": "DEBUG"}, metrics=False)
    procs = topo.processes
    assert [p.name for p in procs["classify"]] == ["classify-0", "classify-1"] and len(procs["dispatch"]) == 1
    first = procs["classify"][0]
    assert first.argv == [sys.executable, "-m", "frontdesk", "classify"]
    assert first.env["FRONTDESK_LOG_LEVEL"] == "DEBUG" and "FRONTDESK_METRICS_PORT" not in first.env
    assert first.log_path == tmp_path / "logs" / "classify-0.log" and first.ready_port is None


def test_no_metrics_means_no_endpoint_even_where_the_config_file_enables_one(tmp_path: Path) -> None:
    topo = Topology.from_compose(COMPOSE, ENDPOINTS, services=["classify"], replicas={"classify": 2},
                                 state_dir=tmp_path, metrics=False)
    read = ("from frontdesk.clikit import load; from frontdesk.metrics import MetricsSettings; "
            "m = load(MetricsSettings); print(m.enabled, m.port)")
    for proc in topo.processes["classify"]:  # the mounted config/frontdesk.yaml says port 9464, enabled
        out = subprocess.run([sys.executable, "-c", read], env=proc.env, cwd=proc.cwd, capture_output=True,
                             text=True, timeout=60, check=True)
        assert out.stdout.split()[0] == "False", f"{proc.name} would serve metrics on port {out.stdout.split()[1]}"


def sleeper(tmp_path: Path, name: str, code: str = "import time; time.sleep(120)") -> StageProcess:
    return StageProcess(name, 0, [sys.executable, "-c", code], {"PATH": "/usr/bin"}, tmp_path / f"{name}.log",
                        tmp_path)


def wait_for(condition, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_supervisor_restarts_a_killed_process_and_stops_cleanly(tmp_path: Path) -> None:
    with Topology([sleeper(tmp_path, "worker")], backoff=(0.2, 1.0), stop_timeout=10) as topo:
        topo.wait_ready(20)
        proc = topo.processes["worker"][0]
        first = proc.pid
        assert topo.kill("worker") == first
        assert wait_for(lambda: proc.alive and proc.pid != first), proc.log_tail()
        assert proc.starts == 2
        topo.wait_ready(20)
    assert proc.returncode == -signal.SIGTERM
    log = proc.log_path.read_text()
    assert "killed by SIGKILL; restarting in 0.2s" in log and "start #2" in log and "stopped" in log


def test_a_configuration_error_is_not_restarted(tmp_path: Path) -> None:
    bad = sleeper(tmp_path, "bad", "import sys; print('invalid [bus] settings'); sys.exit(2)")
    with Topology([bad], backoff=(0.1, 0.1)) as topo:
        with pytest.raises(TopologyError, match=r"gave up on bad(.|\n)*invalid \[bus\] settings"):
            topo.wait_ready(20)
        time.sleep(0.5)
    assert bad.starts == 1 and bad.failed == "exited with code 2 (configuration error)"


def test_restart_false_leaves_a_dead_process_dead(tmp_path: Path) -> None:
    with Topology([sleeper(tmp_path, "once", "pass")], restart=False) as topo:
        assert wait_for(lambda: topo.processes["once"][0].failed is not None)
    assert topo.processes["once"][0].starts == 1


def test_a_process_ignoring_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    stubborn = sleeper(tmp_path, "stubborn", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                             "print('ready', flush=True); time.sleep(120)")
    topo = Topology([stubborn], stop_timeout=1.0).start()
    assert wait_for(lambda: "ready" in stubborn.log_tail().splitlines())
    t0 = time.monotonic()
    assert topo.stop() == {"stubborn-0": -signal.SIGKILL}
    assert time.monotonic() - t0 < 10 and "SIGKILL" in stubborn.log_tail()


def test_cli_rejects_an_unknown_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--compose", str(COMPOSE), "--kafka", "127.0.0.1:1", "--state-dir", str(tmp_path),
                 "--services", "nope"]) == 2
    assert "not a frontdesk service of the compose file: nope" in capsys.readouterr().err


def test_cli_exits_when_a_service_cannot_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The shipped config has no IMAP mailboxes: `frontdesk ingest imap` exits with code 2 before
    # touching Kafka, and the runner gives up on it instead of restarting it forever.
    assert main(["--compose", str(COMPOSE), "--kafka", "127.0.0.1:1", "--state-dir", str(tmp_path),
                 "--services", "ingest-imap", "--ready-timeout", "120"]) == 1
    captured = capsys.readouterr()
    assert "gave up on ingest-imap-0" in captured.err and "no mailboxes configured" in captured.err
    assert "stopping" in captured.out
    assert re.search(r"^  ingest-imap-0: http://127\.0\.0\.1:\d+/metrics, /healthz, /readyz$", captured.out, re.M), \
        "the runner says where the process it gave a free metrics port is scraped"


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


LEADER_WITH_STUBBORN_CHILD = (
    "import signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
    "print('child-pid', child.pid, flush=True)\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(300)\n")


def child_pid(proc: StageProcess) -> int:
    """The pid the process printed as ``child-pid N`` (the first time)."""
    def found() -> list[str]:
        return [line for line in proc.log_tail(100).splitlines() if line.startswith("child-pid ")]

    assert wait_for(lambda: bool(found())), proc.log_tail()
    return int(found()[0].split()[1])


def test_stop_kills_children_that_outlive_their_leader(tmp_path: Path) -> None:
    leader = sleeper(tmp_path, "leader", LEADER_WITH_STUBBORN_CHILD)
    topo = Topology([leader], stop_timeout=3.0).start()
    child = child_pid(leader)
    assert topo.stop() == {"leader-0": 0}, "the leader exits on SIGTERM; its child ignores it"
    assert wait_for(lambda: not running(child), 10), "the child was left running in the process group"


def test_a_restart_first_kills_what_the_dead_process_left_in_its_group(tmp_path: Path) -> None:
    flag = tmp_path / "crashed"
    code = (f"import pathlib, sys\nif not pathlib.Path({str(flag)!r}).exists():\n"
            f"    pathlib.Path({str(flag)!r}).touch()\n" + "\n".join("    " + line for line in
                                                               LEADER_WITH_STUBBORN_CHILD.splitlines()[:3])
            + "\n    sys.exit(1)\nimport time; time.sleep(120)\n")
    proc = sleeper(tmp_path, "crashy", code)
    with Topology([proc], backoff=(0.2, 0.2), stop_timeout=3.0) as topo:
        child = child_pid(proc)
        assert wait_for(lambda: proc.starts == 2), proc.log_tail()
        assert wait_for(lambda: not running(child), 10), "the first run's child still runs beside the second run"
        topo.wait_ready(20)


def test_the_database_url_comes_from_the_environment_and_is_checked(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql+psycopg://fd:pw-S3cret@127.0.0.1:15432/cases"
    assert database_url(None, {DATABASE_URL_ENV: url}) == url
    assert database_url("sqlite:///x.db", {DATABASE_URL_ENV: url}) == "sqlite:///x.db", "the command line wins"
    assert database_url(None, {}) is None
    for bad, why in (("postgresql+psycopg://fd:pw-S3cret@h:5x/db", "the port of the URL is not a number"),
                     ("postgresql+psycopg://fd:pw-S3cret@h:99999/db", "port 99999 is not in 1-65535"),
                     ("mysqlx://fd:pw-S3cret@h/db", "unknown database dialect 'mysqlx'"),
                     ("pw-S3cret", "not a SQLAlchemy URL")):
        assert main(["--compose", str(COMPOSE), "--kafka", "127.0.0.1:1", "--state-dir", str(tmp_path)],
                    environ={DATABASE_URL_ENV: bad}) == 2
        err = capsys.readouterr().err
        assert f"{DATABASE_URL_ENV}: {why}" in err and "S3cret" not in err


def test_the_variables_the_runner_sets_are_settings(tmp_path: Path) -> None:
    # Unknown FRONTDESK_<SECTION>_* variables are a configuration error: none of the runner's may be one.
    services = local(tmp_path)
    for name in services.select(None) + ["ingest-telegram"]:
        env = services.env(name, 0)
        for cls in settings_classes():
            check_environment(cls, env)


def test_a_killed_group_is_not_signalled_again_until_the_next_spawn(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Once its members are gone, the group id may belong to an unrelated process group.
    proc = sleeper(tmp_path, "once")
    proc.spawn()
    proc.signal(signal.SIGKILL, group=True)
    assert proc.popen is not None and proc.popen.wait(10) == -signal.SIGKILL
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr("os.killpg", lambda pgid, sig: calls.append((pgid, sig)))
    proc.signal(signal.SIGKILL, group=True)
    assert calls == []
    proc.spawn()
    proc.signal(signal.SIGTERM, group=True)
    assert calls == [(proc.pid, signal.SIGTERM)]
    monkeypatch.undo()
    proc.signal(signal.SIGKILL, group=True)
    proc.popen.wait(10)
    proc.close_log()
