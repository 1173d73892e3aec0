"""Discovery: where endpoints come from (static config now); publishes immutable snapshots."""
