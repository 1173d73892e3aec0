"""nodeproxy: a per-node service-mesh proxy for Kubernetes, on trio and h11."""

__version__ = "0.1.0"
