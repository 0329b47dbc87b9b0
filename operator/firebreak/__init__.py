"""Firebreak: a Kubernetes operator for automated security incident response."""

__version__ = "0.1.0"
