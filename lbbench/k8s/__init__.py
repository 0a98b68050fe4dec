"""The experiment on a real Kubernetes cluster: manifests (render), generator parts (parts), merging (merge)."""
