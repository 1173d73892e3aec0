"""Shared pytest setup. Fixtures live in tests/helpers/ modules owned by each area."""
