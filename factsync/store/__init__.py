"""The daemon's durable state: a SQLite file with versioned schema migrations."""
