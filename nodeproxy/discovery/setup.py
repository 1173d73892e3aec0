"""Which discovery a config asks for, and how it is put in front of the data path.

Why a module: app.py should read as a nursery tree, not as a switch over
discovery kinds. Two choices, both decided here once at start-up:

- **static** (the default): the ``services`` endpoints are published once,
  before anything listens; ``/ready`` is 200 as soon as the listeners are up.
- **kubernetes**: nothing is published until every watched resource has
  listed once (``/ready`` says ``503 starting`` until then). The registry is an
  ``OverlayRegistry`` (configured endpoints survive each publish) and
  ``config.clusters`` becomes a ``ClusterCatalog`` (discovered clusters get
  default settings), so routing, pools and admin pages see discovered services
  without knowing where they came from. The mesh, when configured, takes its
  peers' addresses and the local pods' identities from each refresh
  (``Mesh.update``), before the snapshot they belong to is published.
"""

from __future__ import annotations

import dataclasses
import random

from nodeproxy.config.model import Config, KubernetesConfig
from nodeproxy.discovery.catalog import ClusterCatalog, OverlayRegistry
from nodeproxy.discovery.kubernetes import (
    K8S_HELP,
    ApiClient,
    KubernetesDiscovery,
    KubernetesDiscoveryConfig,
    ReflectorSettings,
    api_access,
)
from nodeproxy.discovery.snapshot import static_snapshot
from nodeproxy.runtime import Runtime
from nodeproxy.stats.names import HELP


def discovery_config(config: Config, k8s: KubernetesConfig) -> KubernetesDiscoveryConfig:
    """The discovery code's settings from the ``discovery.kubernetes`` section."""
    return KubernetesDiscoveryConfig(
        endpoints_api=k8s.endpoints_api,
        node_name=config.node_name,
        kubeconfig=k8s.kubeconfig,
        context=k8s.context,
        node_proxy_port=k8s.node_proxy_port,
        reflector=ReflectorSettings(watch_timeout=k8s.watch_timeout),
    )


def build_runtime(config: Config) -> Runtime:
    """The runtime, with the static snapshot published or the catalog in place."""
    if config.discovery.kubernetes is None:
        runtime = Runtime(config)
        runtime.endpoints.publish(static_snapshot(config))
        return runtime
    registry = OverlayRegistry(static_snapshot(config))
    catalog = ClusterCatalog(config.clusters, registry, config.default_namespace)
    return Runtime(dataclasses.replace(config, clusters=catalog), endpoints=registry)


def build_kubernetes(runtime: Runtime) -> KubernetesDiscovery | None:
    """The Kubernetes discovery to start, or None for static config.

    Raises ``ConfigError`` when the API cannot be located (no kubeconfig and
    not in a pod, an unreadable kubeconfig): before anything starts.
    """
    config = runtime.config
    k8s = config.discovery.kubernetes
    if k8s is None:
        return None
    for name, text in K8S_HELP.items():
        HELP.setdefault(name, text)
    cfg = discovery_config(config, k8s)
    client = ApiClient(api_access(cfg))
    disc = KubernetesDiscovery(
        client, runtime.endpoints, runtime.stats, cfg, config.default_namespace, random.Random()
    )
    mesh = runtime.mesh
    if mesh is not None:
        disc.on_refresh = lambda: mesh.update(disc.node_proxies, disc.pod_identities)
    return disc
