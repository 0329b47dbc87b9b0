"""The local Kubernetes cluster used by the tests, `make cluster` and `make demo`: a
control plane, kwok's fake nodes, and one real node where the host allows it."""

from .binaries import Binaries, ensure_binaries
from .cluster import ControlPlaneError, LocalCluster, stop_detached
from .realnode import RealNode

__all__ = ["Binaries", "ControlPlaneError", "LocalCluster", "RealNode", "ensure_binaries",
           "stop_detached"]
