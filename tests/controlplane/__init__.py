"""The local Kubernetes control plane used by the tests, `make cluster` and `make demo`."""

from .binaries import Binaries, ensure_binaries
from .cluster import ControlPlaneError, LocalCluster, stop_detached

__all__ = ["Binaries", "ControlPlaneError", "LocalCluster", "ensure_binaries", "stop_detached"]
