"""The BPF C source of ebpf-socketlb, its pre-compiled object and the reproducible build."""
