"""The long-running process: configuration, ingest, reconciler, worker, metrics and API."""
