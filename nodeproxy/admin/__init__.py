"""Admin interface: stats, clusters, config dump, readiness and drain."""
