"""Downstream side: listeners, the per-connection loop, forwarding and relaying."""
