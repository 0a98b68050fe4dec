"""lbbench's userspace random-DNAT forwarder (kube-proxy's userspace mode): plan, relay, workers sharing a listener."""
