"""Fakes of external systems that speak their real wire protocols (see each module)."""
