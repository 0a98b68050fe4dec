"""The kernel doing kube-proxy's job: nftables and iptables rules in kube-proxy's layout,
and Cilium-style eBPF socket-level balancing (ebpf-socketlb).

Rules live in lbbench's private network namespace and BPF programs on the run's own cgroup, never on the host.
"""
