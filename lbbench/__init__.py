"""lbbench: measure kube-proxy-style random DNAT against queueing L7 reverse proxies."""

__version__ = "0.1.0"
