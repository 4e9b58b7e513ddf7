"""Test infrastructure for Kubernetes: the real kubectl and helm, the operator in a thread,
and the test playing the kubelet (the control plane itself is in tests/cluster)."""
