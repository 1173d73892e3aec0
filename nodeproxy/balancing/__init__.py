"""Balancing: pick one endpoint of a cluster for each request (pure, takes ``now``)."""
