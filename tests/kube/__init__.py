"""Test infrastructure for Kubernetes: an API server emulator and the real kubectl/helm."""
