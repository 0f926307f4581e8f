"""Model adapters shared by editing and evaluation: architecture specs, loading, prompts."""
