"""Pure, sans-IO election protocols.

Nothing in this package may import socket, asyncio, time, subprocess or use
module-level random: time is an argument and randomness an injected Random.
"""
