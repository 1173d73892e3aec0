"""Worker processes under a supervisor: one trio process per core (docs/architecture.md)."""
