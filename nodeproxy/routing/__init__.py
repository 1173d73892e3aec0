"""Routing: authority -> virtual host -> first matching rule -> cluster (pure)."""
