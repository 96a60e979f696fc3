"""electiond: leader election for bare-metal LANs."""

__version__ = "0.1.0"
