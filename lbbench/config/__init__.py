"""The config language: TOML in the Kubernetes vocabulary -> typed, validated objects.

Every error names the file, the key path and what was expected.
"""
