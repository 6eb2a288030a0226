"""Integration-test Kubernetes control plane (see README.md in this folder)."""
