"""lbbench's userspace random-DNAT forwarder (kube-proxy's userspace mode): plan, relay, SO_REUSEPORT workers."""
