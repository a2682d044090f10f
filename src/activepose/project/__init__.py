"""The project store: one SQLite database per project (schema and migrations, state changes, leases)."""
