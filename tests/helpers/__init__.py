"""Helpers shared by the tests: a queueing simulator, L4 scenarios, raw HTTP against the proxy, paths."""
