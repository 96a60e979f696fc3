"""Scripted scenarios (tests/sim_scenarios/*.txt) and the script language itself."""

import pathlib

import pytest

from electiond.sim.runner import with_variant
from electiond.sim.scenario import ScenarioError, parse_duration_s, run_scenario
from tests.lease_mutants import MUTANTS as LEASE_MUTANTS
from tests.sim_mutants import NeverYieldBully

SCENARIOS = sorted((pathlib.Path(__file__).parent / "sim_scenarios").glob("*.txt"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path):
    run_scenario(path.read_text(), name=str(path))


def test_durations():
    assert parse_duration_s("200ms") == 0.2
    assert parse_duration_s("1.5s") == 1.5
    with pytest.raises(ValueError):
        parse_duration_s("3")


def test_a_failed_expectation_names_the_line_and_shows_the_trace():
    script = "nodes 3\nadvance 1s\nexpect leader n1\n"
    with pytest.raises(ScenarioError) as e:
        run_scenario(script, name="s")
    text = str(e.value)
    assert "s:3: expect leader n1" in text and "leaders are ['n3']" in text
    assert "n3 → n1 HEARTBEAT term=1" in text


def test_unknown_commands_and_late_header_lines_are_errors():
    with pytest.raises(ScenarioError, match="unknown command"):
        run_scenario("nodes 3\nfrobnicate n1\n")
    with pytest.raises(ScenarioError, match="before the first action"):
        run_scenario("nodes 3\nadvance 1s\nnodes 5\n")
    with pytest.raises(ScenarioError, match="no node"):
        run_scenario("nodes 3\ncrash n9\n")
    # derived from the others (quorum from the members): not a knob
    with pytest.raises(ScenarioError, match="no field 'quorum'"):
        run_scenario("nodes 3\nset quorum 1\n")


def test_settings_lines_reach_the_protocol():
    c = run_scenario("nodes 4\nset heartbeat_interval_s 20ms\nset preempt no\nadvance 10ms\n")
    s = c.hosts[0].settings
    assert s.heartbeat_interval_s == 0.02 and s.preempt is False and len(s.members) == 4


def test_a_mutant_fails_the_paused_leader_scenario_with_a_checker_violation():
    script = (pathlib.Path(__file__).parent / "sim_scenarios" / "bully_paused_leader.txt").read_text()
    with pytest.raises(ScenarioError):
        run_scenario(script, registry=with_variant("bully", NeverYieldBully))


def test_expect_violation_claims_a_checker_report():
    # judged by quorum-lease rules, bully's split brain is a violation; the
    # script can say it expects one
    script = """
    nodes 3
    advance 1s
    isolate n3
    advance 1500ms
    expect leaders n2 n3
    heal
    advance 100ms
    expect violation two-leaders
    """
    from electiond.sim import checker

    checker.INVARIANTS["bully-as-lease"] = checker.LEASE_INVARIANTS
    try:
        from electiond.node import PROTOCOLS

        registry = {**PROTOCOLS, "bully-as-lease": PROTOCOLS["bully"]}
        run_scenario("protocol bully-as-lease\n" + script.replace("\n    ", "\n"), registry=registry)
        with pytest.raises(ScenarioError, match="invariant broken"):
            run_scenario("protocol bully-as-lease\n" + script.replace("expect violation two-leaders", ""),
                         registry=registry)
    finally:
        del checker.INVARIANTS["bully-as-lease"]


LEASE_SCENARIOS = [p for p in SCENARIOS if p.stem.startswith("lease_")]


@pytest.mark.parametrize("mutant", sorted(LEASE_MUTANTS), ids=sorted(LEASE_MUTANTS))
def test_every_lease_mutant_fails_some_lease_scenario(mutant):
    failed = []
    for path in LEASE_SCENARIOS:
        try:
            run_scenario(path.read_text(), registry=with_variant("quorum-lease", LEASE_MUTANTS[mutant]), name=path.stem)
        except ScenarioError as e:
            failed.append(f"{path.stem}: {str(e).splitlines()[1].strip()}")
    assert failed, f"{mutant} passed every quorum-lease scenario"


# scenario -> the lease mutant it must catch through the checker
LEASE_MUTANT_SCENARIOS = [
    ("lease_slow_acks", "lease measured from reply"),
    ("lease_slow_acks", "leader ignores lease expiry"),
    ("lease_isolated_leader_priority", "leader ignores lease expiry"),
]


@pytest.mark.parametrize("scenario,mutant", LEASE_MUTANT_SCENARIOS)
def test_lease_scenario_catches_its_mutant(scenario, mutant):
    from tests.lease_mutants import MUTANTS

    text = (pathlib.Path(__file__).parent / "sim_scenarios" / f"{scenario}.txt").read_text()
    # the coverage rules flag a broken lease before the overlap itself happens
    with pytest.raises(ScenarioError, match="two-leaders|lease-uncovered|promise-forgotten"):
        run_scenario(text, registry=with_variant("quorum-lease", MUTANTS[mutant]))
