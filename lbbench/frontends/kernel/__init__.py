"""The kernel doing kube-proxy's job: nftables and iptables rules in kube-proxy's layout.

They live inside lbbench's private network namespace, never on the host.
"""
