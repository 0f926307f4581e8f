"""Fact feed sources. Each turns its source's rows into ``FactRecord``s for a ``FactSink``."""
