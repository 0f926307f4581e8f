"""factsync: keep a deployed language model's facts current, automatically and safely."""

import os

# OpenMP reads this once, when torch is imported: threads waiting for work sleep instead
# of spinning, so processes sharing cores do not starve each other (see threads.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
