"""The shipped hooks: scripts/hooks/vip and scripts/hooks/systemd-unit.

Argument and environment errors run anywhere. Moving an address needs root and
happens only inside network namespaces this test creates (and always deletes);
the address is from a private test subnet that exists only there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VIP = REPO / "scripts" / "hooks" / "vip"
UNIT = REPO / "scripts" / "hooks" / "systemd-unit"
IS_ROOT = os.geteuid() == 0
IP = shutil.which("ip")


def run(argv, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("ELECTIOND_EVENT", None)
    full_env.update(env or {})
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=full_env, timeout=timeout)


# --------------------------------------------------------------------------- vip: errors


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "expected 3 arguments, got 0"),
        (["up", "192.0.2.10/24"], "expected 3 arguments, got 2"),
        (["sideways", "192.0.2.10/24", "lo"], "unknown action 'sideways'"),
        (["up", "192.0.2.10", "lo"], "has no /PREFIX"),
        (["up", "192.0.2.300/24", "lo"], "bad IPv4 address '192.0.2.300'"),
        (["up", "192.0.2/24", "lo"], "bad IPv4 address '192.0.2'"),
        (["up", "192.0.2.10/33", "lo"], "prefix /33 is larger than 32"),
        (["up", "192.0.2.10/x", "lo"], "bad prefix '/x'"),
        (["up", "2001:db8::g/64", "lo"], "bad IPv6 address"),
        (["up", "2001:db8::1/129", "lo"], "larger than 128"),
        (["up", "192.0.2.10/24", "a/b"], "bad interface name"),
        (["auto", "192.0.2.10/24", "lo"], "auto needs ELECTIOND_EVENT"),
    ],
)
def test_vip_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run([VIP, *args])
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "usage: vip up|down|auto ADDRESS/PREFIX IFACE" in result.stderr


def test_vip_auto_rejects_unknown_event() -> None:
    result = run([VIP, "auto", "192.0.2.10/24", "lo"], {"ELECTIOND_EVENT": "reboot"})
    assert result.returncode == 2 and "unknown ELECTIOND_EVENT 'reboot'" in result.stderr


def test_vip_missing_ip_exits_3(tmp_path: Path) -> None:
    result = run([VIP, "down", "192.0.2.10/24", "lo"], {"VIP_IP": str(tmp_path / "no-ip")})
    assert result.returncode == 3 and "ip not found (install iproute2)" in result.stderr


@pytest.mark.skipif(IP is None, reason="iproute2 not installed")
def test_vip_missing_arping_exits_3_before_touching_anything(tmp_path: Path) -> None:
    # a PATH holding sh and friends but no arping
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ["sh", "grep", "awk", "cat"]:
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    result = run([VIP, "up", "192.0.2.10/24", "lo"], {"PATH": str(bindir), "VIP_IP": IP})
    assert result.returncode == 3, result.stderr
    assert "arping not found (install iputils-arping or arping, or set VIP_ARP_COUNT=0)" in result.stderr


def test_vip_arping_of_unknown_kind_exits_3(tmp_path: Path) -> None:
    fake = tmp_path / "arping"
    fake.write_text("#!/bin/sh\necho 'some other arping'\n")
    fake.chmod(0o755)
    result = run([VIP, "up", "192.0.2.10/24", "lo"], {"VIP_ARPING": str(fake)})
    assert result.returncode == 3 and "neither iputils-arping nor Habets' arping" in result.stderr


@pytest.mark.skipif(IP is None, reason="iproute2 not installed")
def test_vip_unknown_interface_exits_4() -> None:
    missing = f"nx{os.getpid() % 100000}"
    for action in ["up", "down"]:
        result = run([VIP, action, "192.0.2.10/24", missing], {"VIP_ARP_COUNT": "0"})
        assert result.returncode == 4, result.stderr
        assert f"no interface '{missing}'" in result.stderr


def test_vip_bad_arp_settings_exit_2() -> None:
    assert run([VIP, "down", "192.0.2.10/24", "lo"], {"VIP_ARP_COUNT": "many"}).returncode == 2
    assert run([VIP, "down", "192.0.2.10/24", "lo"], {"VIP_ARP_MODE": "shout"}).returncode == 2
    assert run([VIP, "down", "192.0.2.10/24", "lo"], {"VIP_ARP_INTERVAL": "soon"}).returncode == 2


# --------------------------------------------------------------------------- vip: in namespaces


def arpings() -> list[str]:
    """Every arping to test with: the one on PATH plus any listed in
    VIP_TEST_ARPINGS (colon separated), so both Debian flavours can be covered."""
    found = []
    for candidate in [shutil.which("arping"), *os.environ.get("VIP_TEST_ARPINGS", "").split(":")]:
        if candidate and os.access(candidate, os.X_OK) and candidate not in found:
            found.append(candidate)
    return found


def arping_flavor(path: str) -> str:
    out = subprocess.run([path, "-V"], capture_output=True, text=True).stdout
    return "iputils" if "iputils" in out else "habets"


class Pair:
    """Two namespaces joined by a veth pair: 'host' (runs vip) and 'peer',
    with IPv4 addresses or (``family=6``) IPv6 ULA ones."""

    ADDRESSES = {4: ("10.213.77.1/24", "10.213.77.2/24"), 6: ("fd00:213:77::1/64", "fd00:213:77::2/64")}

    def __init__(self, tag: str, family: int = 4) -> None:
        suffix = f"{os.getpid()}{tag}"
        kind = "v" if family == 4 else "6"  # apart from the other family's pair with the same tag
        self.family = family
        self.host, self.peer = f"e{kind}h{suffix}", f"e{kind}p{suffix}"
        self.created: list[str] = []
        try:
            for ns in (self.host, self.peer):
                sh(["ip", "netns", "add", ns])
                self.created.append(ns)
            host_end, peer_end = f"e{kind}a{suffix}"[:15], f"e{kind}b{suffix}"[:15]
            sh(["ip", "link", "add", host_end, "netns", self.host, "type", "veth",
                "peer", "name", peer_end, "netns", self.peer])
            sh(["ip", "-n", self.host, "link", "set", host_end, "name", "lan0"])
            sh(["ip", "-n", self.peer, "link", "set", peer_end, "name", "lan0"])
            for ns, addr in zip((self.host, self.peer), self.ADDRESSES[family]):
                # up first: IPv6 takes a nodad address (usable at once) on a link that is up
                sh(["ip", "-n", ns, "link", "set", "lan0", "up"])
                sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                if family == 4:
                    sh(["ip", "-n", ns, "addr", "add", addr, "dev", "lan0"])
                else:
                    sh(["ip", "-n", ns, "-6", "addr", "add", addr, "dev", "lan0", "nodad"])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ns in self.created:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        self.created = []

    def vip(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.host, VIP, *args], env)

    def _address_lines(self) -> str:
        return sh(["ip", "-n", self.host, "-o", f"-{self.family}", "addr", "show", "dev", "lan0"])

    def addresses(self) -> list[str]:
        return re.findall(r"inet6? (\S+)", self._address_lines())

    def flags(self, cidr: str) -> str:
        return next(line for line in self._address_lines().splitlines() if f" {cidr} " in line)

    def host_mac(self) -> str:
        out = sh(["ip", "-n", self.host, "-o", "link", "show", "lan0"])
        return re.search(r"link/ether (\S+)", out).group(1)

    def peer_neighbour(self, addr: str) -> str:
        return sh(["ip", "-n", self.peer, f"-{self.family}", "neigh", "show", addr])


def sh(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


needs_root = pytest.mark.skipif(not IS_ROOT or IP is None, reason="needs root and iproute2 to create network namespaces")


@needs_root
@pytest.mark.parametrize("arping_index", [0, 1])
def test_vip_up_down_is_idempotent_and_announces(arping_index: int) -> None:
    candidates = arpings()
    if arping_index >= len(candidates):
        pytest.skip("no (second) arping installed; list more in VIP_TEST_ARPINGS to cover both flavours")
    arping = candidates[arping_index]
    pair = Pair(str(arping_index))
    try:
        vip = "10.213.77.50/24"
        # the peer believes the VIP lives at some other MAC (a previous leader)
        sh(["ip", "-n", pair.peer, "neigh", "replace", "10.213.77.50", "lladdr", "02:00:00:00:00:99",
            "dev", "lan0", "nud", "stale"])
        env = {"VIP_ARPING": arping, "VIP_ARP_COUNT": "2"}

        up = pair.vip("up", vip, "lan0", env=env)
        assert up.returncode == 0, up.stderr
        assert f"added {vip} to lan0" in up.stdout
        assert f"({arping_flavor(arping)} arping; 1 more every 1s while it stays here)" in up.stdout
        assert vip in pair.addresses()
        # the gratuitous ARP moved the peer's entry to our MAC
        assert pair.host_mac() in pair.peer_neighbour("10.213.77.50")

        again = pair.vip("up", vip, "lan0", env=env)
        assert again.returncode == 0 and "already on lan0" in again.stdout
        assert pair.addresses().count(vip) == 1

        down = pair.vip("down", vip, "lan0", env=env)
        assert down.returncode == 0 and f"removed {vip} from lan0" in down.stdout
        assert vip not in pair.addresses()
        assert "10.213.77.1/24" in pair.addresses()  # the host's own address is untouched

        again = pair.vip("down", vip, "lan0", env=env)
        assert again.returncode == 0 and "not on lan0" in again.stdout
    finally:
        pair.close()


@needs_root
def test_vip_auto_follows_electiond_event_and_arp_can_be_disabled(tmp_path: Path) -> None:
    pair = Pair("a")
    try:
        vip = "10.213.77.51/32"
        # no arping needed when announcements are off
        env = {"VIP_ARP_COUNT": "0", "VIP_ARPING": str(tmp_path / "none")}
        r = pair.vip("auto", vip, "lan0", env={**env, "ELECTIOND_EVENT": "promote"})
        assert r.returncode == 0, r.stderr
        assert vip in pair.addresses()
        r = pair.vip("auto", vip, "lan0", env={**env, "ELECTIOND_EVENT": "fault"})
        assert r.returncode == 0 and vip not in pair.addresses()
    finally:
        pair.close()


@needs_root
def test_vip_failed_announcement_exits_6_with_address_configured(tmp_path: Path) -> None:
    fake = tmp_path / "arping"
    fake.write_text("#!/bin/sh\n[ \"$1\" = -V ] && { echo 'arping from iputils 0'; exit 0; }\necho 'send failed' >&2\nexit 2\n")
    fake.chmod(0o755)
    pair = Pair("f")
    try:
        r = pair.vip("up", "10.213.77.52/24", "lan0", env={"VIP_ARPING": str(fake)})
        assert r.returncode == 6 and "gratuitous ARP for 10.213.77.52 on lan0 failed: send failed" in r.stderr
        assert "10.213.77.52/24" in pair.addresses()
    finally:
        pair.close()


def counting_arping(tmp_path: Path, real: str) -> tuple[Path, Path]:
    """An arping that logs each call and then runs the real one."""
    calls_log = tmp_path / "arping.calls"
    wrapper = tmp_path / "arping"
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *-c*) echo x >> "{calls_log}" ;; esac\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, calls_log


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@needs_root
def test_vip_repeats_stop_when_the_address_goes_or_the_daemon_dies(tmp_path: Path) -> None:
    candidates = arpings()
    if not candidates:
        pytest.skip("no arping installed")
    wrapper, calls_log = counting_arping(tmp_path, candidates[0])
    pair = Pair("r")
    daemon = subprocess.Popen(["sleep", "100000"])  # stands in for electiond
    try:
        env = {"VIP_ARPING": str(wrapper), "VIP_ARP_COUNT": "1000", "VIP_ARP_INTERVAL": "0.1",
               "ELECTIOND_PID": str(daemon.pid)}
        started = time.monotonic()
        up = pair.vip("up", "10.213.77.53/24", "lan0", env=env)
        assert up.returncode == 0, up.stderr
        # "up" returns after the first announcement, not after all of them
        assert time.monotonic() - started < 30 and count_lines(calls_log) >= 1
        wait_until(lambda: count_lines(calls_log) >= 3, 30, "repeated announcements")
        # a demote removes the address: the repeats stop
        assert pair.vip("down", "10.213.77.53/24", "lan0", env=env).returncode == 0
        settled = count_lines(calls_log)
        time.sleep(1.5)  # many intervals; at most the one already under way may still go out
        assert count_lines(calls_log) <= settled + 1

        # the daemon dies while the address is up: the repeats stop too
        calls_log.unlink()
        assert pair.vip("up", "10.213.77.53/24", "lan0", env=env).returncode == 0
        wait_until(lambda: count_lines(calls_log) >= 2, 30, "repeated announcements")
        daemon.kill()
        daemon.wait(10)
        settled = count_lines(calls_log)
        time.sleep(1.5)
        assert count_lines(calls_log) <= settled + 1
        assert "10.213.77.53/24" in pair.addresses()  # only the startup cleanup removes it
    finally:
        daemon.kill()
        daemon.wait(10)
        pair.close()


# --------------------------------------------------------------------------- systemd-unit


@pytest.fixture
def fake_systemctl(tmp_path: Path) -> tuple[Path, Path]:
    """A systemctl that logs its arguments; FAKE_LOADSTATE and FAKE_RC steer it."""
    log = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$*" >> "{log}"
            case "$1" in
                show) echo "${{FAKE_LOADSTATE:-loaded}}" ;;
                is-active) echo failed; exit 3 ;;
                start|stop)
                    [ "${{FAKE_RC:-0}}" = 0 ] || echo "Job for $3 failed." >&2
                    exit "${{FAKE_RC:-0}}" ;;
            esac
            """
        )
    )
    fake.chmod(0o755)
    return fake, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_systemd_unit_start_and_stop(fake_systemctl) -> None:
    fake, log = fake_systemctl
    env = {"SYSTEMD_UNIT_SYSTEMCTL": str(fake)}
    r = run([UNIT, "start", "postgresql@15-main.service"], env)
    assert r.returncode == 0 and "started postgresql@15-main.service" in r.stdout
    r = run([UNIT, "stop", "postgresql@15-main.service"], env)
    assert r.returncode == 0 and "stopped postgresql@15-main.service" in r.stdout
    assert [c for c in calls(log) if not c.startswith("show")] == [
        "start -- postgresql@15-main.service",
        "stop -- postgresql@15-main.service",
    ]


def test_systemd_unit_auto(fake_systemctl) -> None:
    fake, log = fake_systemctl
    for event, verb in [("promote", "start"), ("demote", "stop"), ("fault", "stop")]:
        r = run([UNIT, "auto", "app.service"], {"SYSTEMD_UNIT_SYSTEMCTL": str(fake), "ELECTIOND_EVENT": event})
        assert r.returncode == 0, r.stderr
        assert calls(log)[-1] == f"{verb} -- app.service"


def test_systemd_unit_failure_exit_5(fake_systemctl) -> None:
    fake, _ = fake_systemctl
    r = run([UNIT, "start", "app.service"], {"SYSTEMD_UNIT_SYSTEMCTL": str(fake), "FAKE_RC": "1"})
    assert r.returncode == 5
    assert "systemctl start app.service failed (now failed): Job for app.service failed." in r.stderr


def test_systemd_unit_missing_unit(fake_systemctl) -> None:
    fake, log = fake_systemctl
    env = {"SYSTEMD_UNIT_SYSTEMCTL": str(fake), "FAKE_LOADSTATE": "not-found"}
    r = run([UNIT, "start", "typo.service"], env)
    assert r.returncode == 4 and "unit 'typo.service' does not exist" in r.stderr
    # stopping what is not there is not a reason to fail a demote
    r = run([UNIT, "stop", "typo.service"], env)
    assert r.returncode == 0 and "nothing to stop" in r.stdout
    assert not any(c.startswith(("start", "stop")) for c in calls(log))


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "expected 2 arguments, got 0"),
        (["restart", "a.service"], 2, "unknown action 'restart'"),
        (["start", "-a.service"], 2, "bad unit name"),
        (["start", "a b.service"], 2, "bad unit name"),
        (["start", "../x"], 2, "bad unit name"),
        (["auto", "a.service"], 2, "auto needs ELECTIOND_EVENT"),
    ],
)
def test_systemd_unit_usage_errors(args, code, message) -> None:
    r = run([UNIT, *args])
    assert r.returncode == code and message in r.stderr


def test_systemd_unit_missing_systemctl(tmp_path: Path) -> None:
    r = run([UNIT, "start", "a.service"], {"SYSTEMD_UNIT_SYSTEMCTL": str(tmp_path / "nope")})
    assert r.returncode == 3 and "systemctl not found" in r.stderr
