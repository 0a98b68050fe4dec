"""Front ends: base.py (the one interface: start, update Endpoints, stop) and registry.py, then the families.

dnat/ (lbbench's userspace forwarder), kernel/ (nftables, iptables, eBPF socket LB), proxy/ (lbbench's queueing
L7 proxy) and reference/ (HAProxy, nginx, httpd).
"""
