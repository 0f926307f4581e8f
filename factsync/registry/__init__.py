"""Model versions on disk: immutable, content-addressed directories of deltas and reports."""
