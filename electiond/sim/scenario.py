"""Scripted scenarios, in the spirit of etcd raft's interaction tests.

A scenario is a small text file; each line is one command and reads like the
protocol's rules. Header lines (before the first action) shape the cluster:

    protocol bully              # any name in node.PROTOCOLS (default bully)
    nodes 3                     # members n1..nK, with ids 1..K
    set preempt no              # any Settings field (s, ms, yes/no, numbers)
    seed 7                      # seeds the nodes' own random generators
    delay 1ms                   # fixed one-way network delay (default 1ms)
    priority n3 250             # one node's Settings.priority

Actions (nodes start at t=0, with the first action):

    advance 200ms | advance 1.5s
    partition n1 | n2 n3        # symmetric; a node in no group is alone
    isolate n1                  # partition n1 | everyone else
    drop n1->n2                 # cut one direction only
    slow n1->n3 40ms            # extra delay on one direction (0ms: back to normal)
    heal                        # all links up again
    loss 0.2                    # random loss from now on (seeded)
    crash n2 | restart n2 | restart n2 wipe
    pause n1 | resume n1        # frozen; on resume ticked before any message
    clock n1 rate 1.0005        # a one-off clock rate change
    stepdown n1 | transfer n1 [n2]
    disk n1 fail | disk n1 ok   # writes fail (the disk keeps its old state) / work again
    disk n1 crash-in-write 200ms  # the next write never lands: n1 crashes then, back 200ms later

Expectations (checked at the current instant, each node on its own clock):

    expect leader n3 [term 4]   # n3 is the only running node that leads
    expect leaders n1 n3        # exactly these lead (bully split brain)
    expect no-leader
    expect term 4 | expect term n2 4
    expect view n1 n3 | expect view n1 none   # whom n1 believes leads
    expect role n2 candidate
    expect split-brains n2 1    # SplitBrain events n2 has recorded
    expect disk n1 failing      # n1's protocol knows its writes fail (or: ok)
    expect stored n1 term 3 [vote n2]   # what n1's simulated disk holds
    expect promotions n3 <= 1   # Promote effects of n3 since the start (N, <= N or >= N)
    expect raises n3 <= 1       # TokenRaised effects of n3 (a sitting leader's new token)
    expect term n3 <= 4 | expect term <= 4   # term comparisons, one node or every one
    expect blocked n1 clock     # n1's blockers (Node.blockers) include clock
    expect blocked n2 none      # n2 has none
    expect violation two-leaders  # the invariant checker reported this rule

The invariant checker runs throughout, with the protocol's row of
``checker.INVARIANTS``; a violation fails the scenario unless a later
``expect violation RULE`` names it.
"""

from __future__ import annotations

import random
import sys
from dataclasses import fields
from typing import Mapping

from electiond.protocols.base import ElectionProtocol, Member, Settings
from electiond.sim.checker import invariants_for
from electiond.sim.cluster import Cluster
from electiond.sim.network import NetworkModel

TRACE_TAIL = 40


class ScenarioError(AssertionError):
    pass


def parse_duration_s(text: str) -> float:
    text = text.strip()
    if text.endswith("ms"):
        return float(text[:-2]) / 1000.0
    if text.endswith("s"):
        return float(text[:-1])
    raise ValueError(f"a duration needs a unit (ms or s): {text!r}")


def _setting_value(field_type: str, text: str):
    if text in ("yes", "true", "on"):
        return True
    if text in ("no", "false", "off"):
        return False
    if text.endswith("ms") or (text.endswith("s") and text[:-1].replace(".", "", 1).isdigit()):
        return parse_duration_s(text)
    return int(text) if "int" in field_type and "." not in text else float(text)


class Scenario:
    def __init__(self, text: str, registry: Mapping[str, type[ElectionProtocol]] | None = None,
                 name: str = "scenario") -> None:
        self.lines = text.splitlines()
        self.registry = registry
        self.name = name
        self.protocol = "bully"
        self.size = 3
        # the scripts' times predate the start-up clock check (node.py), which
        # would shift every first election by 2.5 s: off unless a script sets
        # clock_check_s (its own tests are tests/test_sim_clock.py)
        self.knobs: dict = {"clock_check_s": 0.0}
        self.seed = 0
        self.delay_s = 0.001
        self.priorities: dict[str, int] = {}
        self.cluster: Cluster | None = None
        self.seen_violations = 0
        self.lineno = 0

    # ---- running ---------------------------------------------------------------

    def run(self) -> Cluster:
        for self.lineno, raw in enumerate(self.lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            try:
                self._command(words, line)
            except ScenarioError:
                raise
            except (ValueError, KeyError, IndexError) as e:
                self._fail(line, f"cannot run this line: {e!r}")
            self._check_violations(line)
        if self.cluster is None:
            self._start()
        return self.cluster

    def _fail(self, line: str, why: str) -> None:
        tail = "\n".join(self.cluster.trace[-TRACE_TAIL:]) if self.cluster else ""
        raise ScenarioError(f"{self.name}:{self.lineno}: {line}\n  {why}\n--- last trace lines ---\n{tail}")

    def _check_violations(self, line: str) -> None:
        if self.cluster is None:
            return
        vs = self.cluster.checker.violations
        if len(vs) > self.seen_violations:
            # an expect violation on one of the next lines may claim it
            rest = [l.split("#", 1)[0].strip() for l in self.lines[self.lineno:]]
            claimed = any(r.startswith("expect violation " + vs[-1].rule) for r in rest)
            if not claimed:
                self._fail(line, f"invariant broken: {vs[-1]}")

    def _start(self) -> None:
        members = tuple(Member(f"n{i}", i) for i in range(1, self.size + 1))
        unknown = set(self.priorities) - {m.name for m in members}
        if unknown:
            raise ValueError(f"priority for unknown nodes {sorted(unknown)}")
        settings = [
            Settings("scenario", m.name, members, **{**self.knobs, "priority": self.priorities.get(m.name, 0)})
            for m in members
        ]
        net = NetworkModel(base_delay_s=self.delay_s, jitter_mean_s=0.0, max_delay_s=self.delay_s)
        self.cluster = Cluster(settings, self.protocol, invariants_for(self.protocol), random.Random(self.seed),
                               network=net, registry=self.registry, trace=True)
        for i in range(self.size):
            self.cluster.boot(i)

    def _node(self, name: str) -> int:
        if name not in self.cluster.index_of:
            raise ValueError(f"no node {name!r}")
        return self.cluster.index_of[name]

    def _command(self, w: list[str], line: str) -> None:
        verb = w[0]
        header = {"protocol", "nodes", "set", "seed", "delay", "priority"}
        if verb in header:
            if self.cluster is not None:
                self._fail(line, f"{verb!r} must come before the first action")
            if verb == "protocol":
                self.protocol = w[1]
            elif verb == "nodes":
                self.size = int(w[1])
            elif verb == "seed":
                self.seed = int(w[1])
            elif verb == "delay":
                self.delay_s = parse_duration_s(w[1])
            elif verb == "priority":
                self.priorities[w[1]] = int(w[2])
            else:
                types = {f.name: str(f.type) for f in fields(Settings) if f.init}  # not the derived ones
                if w[1] not in types:
                    raise ValueError(f"Settings has no field {w[1]!r}")
                self.knobs[w[1]] = _setting_value(types[w[1]], w[2])
            return
        if self.cluster is None:
            self._start()
        c = self.cluster
        if verb != "expect":
            c.note(f"SCENARIO {line}")
        if verb == "advance":
            c.run_until(c.now + parse_duration_s(w[1]), stop_on_violation=False)
        elif verb == "partition":
            groups = [[self._node(n) for n in g.split()] for g in " ".join(w[1:]).split("|")]
            c.links.heal()
            c.partition(groups)
        elif verb == "isolate":
            i = self._node(w[1])
            c.links.heal()
            c.partition([[i], [j for j in c.all_indices if j != i]])
        elif verb == "drop":
            src, _, dst = w[1].partition("->")
            c.cut([self._node(src)], [self._node(dst)])
        elif verb == "slow":
            src, _, dst = w[1].partition("->")
            extra_s = parse_duration_s(w[2])
            key = (self._node(src), self._node(dst))
            if extra_s > 0:
                c.network.slow_links[key] = extra_s
            else:
                c.network.slow_links.pop(key, None)
        elif verb == "heal":
            c.heal()
        elif verb == "loss":
            c.network.loss = float(w[1])
        elif verb == "crash":
            c.crash(self._node(w[1]))
        elif verb == "restart":
            c.boot(self._node(w[1]), keep_disk=not (len(w) > 2 and w[2] == "wipe"))
        elif verb == "pause":
            c.pause(self._node(w[1]))
        elif verb == "resume":
            c.resume(self._node(w[1]))
        elif verb == "clock":
            c.set_clock_rate(self._node(w[1]), float(w[3]))
        elif verb == "disk":
            i = self._node(w[1])
            if w[2] == "crash-in-write":
                c.arm_crash_in_write(i, parse_duration_s(w[3]))
            elif w[2] in ("fail", "ok"):
                c.set_disk(i, w[2] == "fail")
            else:
                raise ValueError("disk NODE fail|ok|crash-in-write DURATION")
        elif verb in ("stepdown", "transfer"):
            h = c.hosts[self._node(w[1])]
            now = h.clock.local(c.now)
            if verb == "stepdown":
                effects = h.node.stepdown(now)
            else:
                effects = h.node.transfer(w[2] if len(w) > 2 else None, now)
            c.note(f"{h.name} {line}")
            c._carry_out(h, effects)
            if h.node is not None:  # not crashed in a write
                c._arm(h, force=True)
                c._check(h)
        elif verb == "expect":
            self._expect(w[1:], line)
        else:
            raise ValueError(f"unknown command {verb!r}")

    # ---- expectations ----------------------------------------------------------------

    def _leaders(self) -> list[str]:
        return [self.cluster.names[i] for i in self.cluster.leaders()]

    def _expect(self, w: list[str], line: str) -> None:
        c = self.cluster
        what = w[0]
        if what == "leader":
            leaders = self._leaders()
            if leaders != [w[1]]:
                self._fail(line, f"leaders are {leaders}")
            if len(w) > 2:
                if w[2] != "term":
                    raise ValueError("expect leader NODE [term T]")
                term = c.hosts[self._node(w[1])].node.protocol.term
                if term != int(w[3]):
                    self._fail(line, f"{w[1]} leads in term {term}")
        elif what == "leaders":
            leaders = self._leaders()
            if sorted(leaders) != sorted(w[1:]):
                self._fail(line, f"leaders are {leaders}")
        elif what == "no-leader":
            if self._leaders():
                self._fail(line, f"leaders are {self._leaders()}")
        elif what == "term":
            if len(w) == 2:
                terms = {h.name: h.node.protocol.term for h in c.hosts if h.node is not None and not h.paused}
                if set(terms.values()) != {int(w[1])}:
                    self._fail(line, f"terms are {terms}")
            elif w[1] in _COMPARISONS:
                terms = {h.name: h.node.protocol.term for h in c.hosts if h.node is not None and not h.paused}
                wrong = {n: t for n, t in terms.items() if not _compare(t, w[1:])}
                if wrong:
                    self._fail(line, f"terms are {terms}")
            else:
                term = c.hosts[self._node(w[1])].node.protocol.term
                if not _compare(term, w[2:]):
                    self._fail(line, f"{w[1]} is in term {term}")
        elif what in ("promotions", "raises"):
            i = self._node(w[1])
            events = c.checker.promotions if what == "promotions" else c.checker.raises
            count = sum(1 for _, node, _ in events if node == i)
            if not _compare(count, w[2:]):
                self._fail(line, f"{w[1]} has {count} {what}")
        elif what == "view":
            seen = c.hosts[self._node(w[1])].node.protocol.leader
            want = None if w[2] == "none" else w[2]
            if seen != want:
                self._fail(line, f"{w[1]} believes the leader is {seen}")
        elif what == "role":
            h = c.hosts[self._node(w[1])]
            role = h.node.role(h.clock.local(c.now))
            if role != w[2]:
                self._fail(line, f"{w[1]} is {role}")
        elif what == "split-brains":
            count = c.hosts[self._node(w[1])].node.split_brains
            if count != int(w[2]):
                self._fail(line, f"{w[1]} recorded {count} split brains")
        elif what == "disk":
            h = c.hosts[self._node(w[1])]
            ok = h.node.protocol.disk.ok
            if w[2] not in ("ok", "failing"):
                raise ValueError("expect disk NODE ok|failing")
            if ok != (w[2] == "ok"):
                self._fail(line, f"{w[1]}'s writes {'work' if ok else 'fail'}: {h.node.protocol.disk.snapshot(0.0)}")
        elif what == "stored":
            disk = c.hosts[self._node(w[1])].disk
            if w[2] != "term":
                raise ValueError("expect stored NODE term T [vote NAME|none]")
            if disk is None or disk.term != int(w[3]):
                self._fail(line, f"{w[1]}'s disk holds {disk}")
            if len(w) > 5 and disk.voted_for != (None if w[5] == "none" else w[5]):
                self._fail(line, f"{w[1]}'s disk holds {disk}")
        elif what == "blocked":
            blockers = sorted(c.hosts[self._node(w[1])].node.blockers)
            if (w[2] == "none" and blockers) or (w[2] != "none" and w[2] not in blockers):
                self._fail(line, f"{w[1]} is blocked by {blockers}")
        elif what == "violation":
            rules = [v.rule for v in c.checker.violations[self.seen_violations:]]
            if w[1] not in rules:
                self._fail(line, f"no {w[1]} violation (saw {rules})")
            self.seen_violations = len(c.checker.violations)
        else:
            raise ValueError(f"unknown expectation {what!r}")


_COMPARISONS = ("<=", ">=")


def _compare(actual: int, words: list[str]) -> bool:
    """``[N]``, ``["<=", N]`` or ``[">=", N]`` against ``actual``."""
    if len(words) == 1:
        return actual == int(words[0])
    if len(words) == 2 and words[0] in _COMPARISONS:
        bound = int(words[1])
        return actual <= bound if words[0] == "<=" else actual >= bound
    raise ValueError(f"expected N, <= N or >= N, not {' '.join(words)!r}")


def run_scenario(text: str, registry: Mapping[str, type[ElectionProtocol]] | None = None,
                 name: str = "scenario") -> Cluster:
    return Scenario(text, registry, name).run()


def main(argv: list[str]) -> int:
    """python -m electiond.sim scenario FILE... [--trace]"""
    show = "--trace" in argv
    failed = 0
    for path in [a for a in argv if a != "--trace"]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            cluster = run_scenario(text, name=path)
        except ScenarioError as e:
            print(f"FAIL {e}")
            failed += 1
            continue
        if show:
            print("\n".join(cluster.trace))
        print(f"ok   {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
