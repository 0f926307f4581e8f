"""What happens to a fact change: admission, preparing a job, the job pipeline and the
one owner of the live version. Sits between the daemon's wiring and the engine."""
