"""`lbbench bench`: lbbench's own speed against the tools users would pick instead, in one run.

Modules: `stats` (median and spread), `cpu` (CPU seconds of process trees), `peers` (wrk,
the nginx "return 200" target), `throughput` (the L4 and L7 groups), `generator` (lbbench's
load generator against wrk), `scale` (pod start, Endpoints sync, nft apply), `suite` (the
whole run and its ratios), `output` (table, bench.json, plot).
"""
