"""factsync: keep a deployed language model's facts current, automatically and safely."""

__version__ = "0.1.0"
