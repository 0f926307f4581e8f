"""The long-running process: configuration, ingest, the worker thread, schedules, the
HTTP API, metrics, alerts and exports. Job and version logic lives in ``factsync.jobs``."""
