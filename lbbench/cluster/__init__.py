"""The Kubernetes model of the notes, run as real processes on loopback."""
