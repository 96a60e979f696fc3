"""Runs INSIDE the systemd-nspawn container (tests/test_nspawn.py), as the
unit electiond-checks.service under the container's own systemd, with
Debian's python3 and the stdlib only. Drives three electiond@ instances
through systemctl, writes what it saw to /results/checks.json (and a
transcript to /results/transcript.txt), then powers the container off.
Every wait is bounded; the host bounds the whole boot as well."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import traceback

RESULTS = "/results"
INSTANCES = {"a": "n1", "b": "n2", "c": "n3"}
HOOK_LOG = f"{RESULTS}/hooks.log"
transcript: list[str] = []
results: dict[str, object] = {}


def note(line: str) -> None:
    stamp = f"[{time.monotonic():9.3f}] {line}"
    transcript.append(stamp)
    print(stamp, flush=True)


def sh(*cmd: str, timeout_s: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    note(f"$ {' '.join(cmd)} -> {result.returncode}")
    if check and result.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {result.stdout}{result.stderr}")
    return result


def show(unit: str, *props: str) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)],
                         capture_output=True, text=True, timeout=30).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit(instance: str) -> str:
    return f"electiond@{instance}.service"


def status(instance: str) -> dict | None:
    result = subprocess.run(["electionctl", "--socket", f"/run/electiond/{instance}/control.sock", "--json",
                             "status"], capture_output=True, text=True, timeout=10)
    return json.loads(result.stdout) if result.returncode == 0 else None


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def agreed_leader(among=None) -> tuple[str, int] | None:
    """(instance, term) when every running instance names one leader and only it leads."""
    statuses = {i: status(i) for i in (among or INSTANCES)}
    if any(s is None for s in statuses.values()):
        return None
    leaders = {s["leader"] for s in statuses.values()}
    leading = [i for i, s in statuses.items() if s["role"] == "leader"]
    if len(leaders) == 1 and len(leading) == 1 and INSTANCES[leading[0]] in leaders:
        return leading[0], statuses[leading[0]]["term"]
    return None


def hook_lines() -> list[list[str]]:
    try:
        with open(HOOK_LOG) as f:
            return [line.split() for line in f]
    except FileNotFoundError:
        return []


def check_start() -> None:
    # states seen while starting: a Type=notify unit is "activating" until READY=1
    for i in INSTANCES:
        sh("systemctl", "start", "--no-block", unit(i), check=True)
    seen: dict[str, list[str]] = {i: [] for i in INSTANCES}
    socket_when_active: dict[str, bool] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(socket_when_active) < len(INSTANCES):
        for i in INSTANCES:
            state = show(unit(i), "ActiveState")["ActiveState"]
            if not seen[i] or seen[i][-1] != state:
                seen[i].append(state)
            if state == "active" and i not in socket_when_active:
                # READY=1 comes after the control socket listens: it must answer now
                socket_when_active[i] = status(i) is not None
        time.sleep(0.02)
    results["start_states"] = seen
    results["socket_answers_when_active"] = socket_when_active
    results["after_start"] = {i: show(unit(i), "ActiveState", "SubState", "Type", "NRestarts") for i in INSTANCES}
    note(f"start: states seen {seen}; control socket answering once active {socket_when_active}")


def check_status_text() -> None:
    leader, term = wait_for(agreed_leader, 30, "an agreed leader")
    # STATUS= follows the role change; give systemd a moment to take it
    texts = wait_for(lambda: (lambda t: t if t[leader].startswith("leader of ") else None)(
        {i: show(unit(i), "StatusText")["StatusText"] for i in INSTANCES}), 15, "the leader's STATUS=")
    results["leader"], results["term"] = leader, term
    results["first_leader"] = leader
    results["status_text"] = texts
    results["systemctl_status"] = sh("systemctl", "status", "--no-pager", "--lines=0", unit(leader)).stdout
    note(f"leader {leader} ({INSTANCES[leader]}) term {term}; StatusText {texts}")
    note("systemctl status:\n" + results["systemctl_status"])
    journal = sh("journalctl", "--no-pager", "-o", "json", "ELECTIOND_ROLE=leader").stdout
    entries = [json.loads(line) for line in journal.splitlines() if line.strip()]
    results["journal_leader_entries"] = [
        {k: e.get(k) for k in ("_SYSTEMD_UNIT", "ELECTIOND_ROLE", "ELECTIOND_TERM", "ELECTIOND_LEADER", "MESSAGE")}
        for e in entries]
    note(f"journalctl ELECTIOND_ROLE=leader: {results['journal_leader_entries']}")


def check_kill_leader() -> None:
    leader, term = results["leader"], results["term"]
    before = show(unit(leader), "MainPID", "NRestarts")
    sh("kill", "-9", before["MainPID"], check=True)
    restarted = wait_for(lambda: (lambda s: s if s["NRestarts"] != before["NRestarts"] and s["ActiveState"] == "active"
                                  else None)(show(unit(leader), "NRestarts", "ActiveState", "MainPID")),
                         30, f"{unit(leader)} restarted")
    cleanup = wait_for(lambda: [h for h in hook_lines() if h[1:3] == [leader, "demote"] and h[-1] == "crash"],
                       15, "the ExecStopPost demote hook")
    new = wait_for(lambda: (lambda a: a if a and a[1] > term else None)(agreed_leader()), 30,
                   "a new leader in a later term")
    results["kill9"] = {"before": before, "after": restarted, "cleanup_hook": cleanup, "new_leader": list(new)}
    note(f"kill -9 {leader}: NRestarts {before['NRestarts']} -> {restarted['NRestarts']}, "
         f"cleanup hook {cleanup}, new leader {new}")
    results["leader"], results["term"] = new


def check_watchdog() -> None:
    victim = next(i for i in INSTANCES if i != results["leader"])
    before = show(unit(victim), "MainPID", "NRestarts")
    sh("kill", "-STOP", before["MainPID"], check=True)
    stopped_at = time.monotonic()
    after = wait_for(lambda: (lambda s: s if s["NRestarts"] != before["NRestarts"] and s["ActiveState"] == "active"
                              else None)(show(unit(victim), "NRestarts", "ActiveState", "MainPID")),
                     60, f"{unit(victim)} restarted by the watchdog")
    took_s = time.monotonic() - stopped_at
    log = sh("journalctl", "--no-pager", "-u", unit(victim), "-o", "cat").stdout
    results["watchdog"] = {"victim": victim, "before": before, "after": after, "seconds": round(took_s, 1),
                           "journal_says_watchdog": "Watchdog timeout" in log}
    note(f"kill -STOP {victim}: restarted after {took_s:.1f} s, NRestarts {before['NRestarts']} -> "
         f"{after['NRestarts']}; journal: {[l for l in log.splitlines() if 'atchdog' in l]}")
    wait_for(agreed_leader, 30, "an agreed leader after the watchdog restart")


def check_bad_config() -> None:
    with open("/etc/electiond/bad.conf", "w") as f:
        f.write(open("/etc/electiond/a.conf").read().replace("protocol = quorum-lease", "protocol = raft"))
    start = sh("systemctl", "start", unit("bad"))
    time.sleep(5)  # RestartSec=1s: a restart would have happened by now
    props = show(unit("bad"), "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    # and the package's own, not yet filled in config: refused the same way, saying why
    shipped = sh("systemctl", "start", "electiond.service")
    time.sleep(3)
    shipped_props = show("electiond.service", "ActiveState", "ExecMainStatus", "NRestarts")
    shipped_log = sh("journalctl", "--no-pager", "-u", "electiond.service", "-o", "cat").stdout
    results["bad_config"] = {"start_rc": start.returncode, **props}
    results["shipped_config"] = {"start_rc": shipped.returncode, **shipped_props,
                                 "says": [l for l in shipped_log.splitlines() if "README.Debian" in l]}
    note(f"bad config: {results['bad_config']}; shipped config: {results['shipped_config']}")


def check_reload() -> None:
    # the leader's config: its stepdown then runs a demote hook for certain
    instance, _ = wait_for(agreed_leader, 30, "an agreed leader before the reload")
    path = f"/etc/electiond/{instance}.conf"
    text = open(path).read()
    text = text.replace(f"record-hook {instance}", f"record-hook {instance}-reloaded")
    with open(path, "w") as f:
        f.write(text)
    sh("systemctl", "reload", unit(instance), check=True)
    wait_for(lambda: "reloaded" in sh("journalctl", "--no-pager", "-u", unit(instance), "-o", "cat").stdout, 15,
             "the reload to be logged")
    sh("electionctl", "--socket", f"/run/electiond/{instance}/control.sock", "stepdown", check=True)
    ran = wait_for(lambda: [h for h in hook_lines() if h[1] == f"{instance}-reloaded"], 30,
                   "a hook run with the reloaded command")
    results["reload"] = {"instance": instance, "hook_runs": ran, "NRestarts": show(unit(instance), "NRestarts")["NRestarts"]}
    note(f"reload: new hook command ran {ran}")


def check_upgrade() -> None:
    """Reinstalling the package (dpkg runs postinst configure with the old
    version) restarts every running instance with SIGTERM: the leader hands
    over (demote reason transfer or stepdown, not crash) and a leader is back."""
    leader, term = wait_for(agreed_leader, 30, "an agreed leader before the upgrade")
    pids = {i: show(unit(i), "MainPID")["MainPID"] for i in INSTANCES}
    hooks_before = len(hook_lines())
    debs = [f for f in os.listdir("/root") if f.startswith("electiond_") and f.endswith(".deb")]
    sh("dpkg", "-i", f"/root/{debs[0]}", timeout_s=180, check=True)
    after = {i: show(unit(i), "MainPID", "ActiveState", "NRestarts") for i in INSTANCES}
    new = wait_for(agreed_leader, 30, "an agreed leader after the upgrade")
    # (after the reload test, a's hooks say "a-reloaded")
    leader_demotes = [h for h in hook_lines()[hooks_before:] if h[1].split("-")[0] == leader and h[2] == "demote"
                      and h[-1] != "startup"]
    results["upgrade"] = {"leader_before": [leader, term], "pids_before": pids, "after": after,
                          "leader_after": list(new), "leader_demote_hooks": leader_demotes}
    note(f"upgrade (dpkg -i again): MainPIDs {pids} -> {[a['MainPID'] for a in after.values()]}, "
         f"old leader's demote hooks {leader_demotes}, leader after {new}")


def main() -> None:
    try:
        sh("ip", "link", "set", "lo", "multicast", "on", check=True)
        sh("ip", "route", "add", "239.0.0.0/8", "dev", "lo", check=True)
        for step in (check_start, check_status_text, check_kill_leader, check_watchdog, check_bad_config,
                     check_reload, check_upgrade):
            note(f"--- {step.__name__}")
            step()
            results.setdefault("passed", []).append(step.__name__)
    except BaseException:
        results["error"] = traceback.format_exc()
        note(results["error"])
    finally:
        results["final_units"] = {u: show(u, "ActiveState", "SubState", "NRestarts", "StatusText")
                                  for u in [unit(i) for i in INSTANCES] + [unit("bad"), "electiond.service"]}
        note(f"final: {results['final_units']}")
        with open(f"{RESULTS}/journal.txt", "w") as f:
            subprocess.run(["journalctl", "--no-pager", "-o", "short-monotonic"], stdout=f, timeout=60)
        with open(f"{RESULTS}/transcript.txt", "w") as f:
            f.write("\n".join(transcript) + "\n")
        with open(f"{RESULTS}/checks.json.tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.rename(f"{RESULTS}/checks.json.tmp", f"{RESULTS}/checks.json")
        subprocess.run(["systemctl", "poweroff", "--no-block"], timeout=30)


if __name__ == "__main__":
    main()
