"""Promotion policies: the schema of a policy file, loading it, and judging KPIs by it."""
