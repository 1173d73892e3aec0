"""Endpoint discovery from the Kubernetes API.

Read top-down: ``access`` (how to reach the API) -> ``apiclient`` (one bounded
GET on trio + h11) -> ``store`` (the pure reflector state: list, events,
bookmarks, 410) -> ``reflector`` (the list+watch loop with backoff) ->
``translate`` (pure: objects -> clusters of endpoints) -> ``discovery`` (runs
the reflectors and publishes snapshots). See docs/kubernetes.md.
"""

from nodeproxy.discovery.kubernetes.access import ApiAccess, from_kubeconfig, in_cluster
from nodeproxy.discovery.kubernetes.apiclient import ApiClient
from nodeproxy.discovery.kubernetes.discovery import (
    KubernetesDiscovery,
    KubernetesDiscoveryConfig,
    api_access,
    watched_resources,
)
from nodeproxy.discovery.kubernetes.reflector import ReflectorSettings
from nodeproxy.discovery.kubernetes.store import K8S_HELP, Backoff

__all__ = [
    "K8S_HELP",
    "ApiAccess",
    "ApiClient",
    "Backoff",
    "KubernetesDiscovery",
    "KubernetesDiscoveryConfig",
    "ReflectorSettings",
    "api_access",
    "from_kubeconfig",
    "in_cluster",
    "watched_resources",
]
