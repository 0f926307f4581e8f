"""The edit engine: keys, target vectors, closed-form spreads, IME and NME, deltas."""
