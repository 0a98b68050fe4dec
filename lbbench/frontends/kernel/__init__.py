"""The kernel doing kube-proxy's job: nftables and iptables rules in kube-proxy's layout, inside lbbench's private namespace."""
