"""The config language: TOML in the Kubernetes vocabulary -> typed, validated objects; every error names file, key path and expectation."""
