"""The simulated LAN: delays, loss, duplication, reordering and partitions.

Reordering is not a separate knob: every copy gets its own random delay, so
two datagrams sent back to back can arrive in either order. Partitions are
a set of cut directed links, so a one-way partition is one direction only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class NetworkModel:
    base_delay_s: float = 0.0005
    jitter_mean_s: float = 0.001  # exponential tail on top of the base
    max_delay_s: float = 0.02  # delays are capped: a LAN, not the internet
    loss: float = 0.0
    duplicate: float = 0.0
    # a "delay spike" fault: delays stretched up to this cap while it lasts
    spike_max_delay_s: float = 0.0
    # stragglers: now and then one datagram is held up (a busy switch queue,
    # a descheduled sender) for up to straggler_max_s
    straggler: float = 0.0
    straggler_max_s: float = 0.0
    # asymmetric slow links (a congested port): (src, dst) -> extra delay
    slow_links: dict = field(default_factory=dict)

    def delay_s(self, rng: random.Random) -> float:
        if self.spike_max_delay_s > 0.0:
            return rng.uniform(self.base_delay_s, self.spike_max_delay_s)
        if self.straggler and rng.random() < self.straggler:
            return rng.uniform(self.base_delay_s, self.straggler_max_s)
        d = self.base_delay_s
        if self.jitter_mean_s > 0:
            # rng.expovariate(1 / mean), written out: the same draw and the
            # same float, without a Python-level call per datagram
            d += -math.log(1.0 - rng.random()) / (1.0 / self.jitter_mean_s)
        return d if d < self.max_delay_s else self.max_delay_s

    def worst_delay_s(self) -> float:
        slow = max(self.slow_links.values(), default=0.0)
        return max(self.max_delay_s, self.spike_max_delay_s, self.straggler_max_s if self.straggler else 0.0) + slow


class Links:
    """Which directed links are cut. Node indices, not names, for speed."""

    __slots__ = ("cut", "description")

    def __init__(self) -> None:
        self.cut: set[tuple[int, int]] = set()
        self.description = ""

    def up(self, src: int, dst: int) -> bool:
        return not self.cut or (src, dst) not in self.cut

    def heal(self) -> None:
        self.cut.clear()
        self.description = ""

    def partition(self, groups: list[list[int]], all_nodes: list[int]) -> None:
        """Symmetric partition: links cut between different groups; a node in
        no group is on its own."""
        group_of = {}
        for g_index, group in enumerate(groups):
            for n in group:
                group_of[n] = g_index
        lone = len(groups)
        for n in all_nodes:
            if n not in group_of:
                group_of[n] = lone
                lone += 1
        self.cut = {(a, b) for a in all_nodes for b in all_nodes if a != b and group_of[a] != group_of[b]}

    def cut_one_way(self, sources: list[int], destinations: list[int]) -> None:
        for a in sources:
            for b in destinations:
                if a != b:
                    self.cut.add((a, b))
