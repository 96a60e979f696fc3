"""The deterministic simulator: the real Node glue on simulated hosts, clocks
and network, an invariant checker on true time, seeded campaigns, scripted
scenarios and a small-scope explorer. See README.md in this directory."""
