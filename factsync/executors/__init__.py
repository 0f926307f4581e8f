"""Where the engine's independent work runs: in this process, or fanned out on Ray.

Two kinds of work split cleanly by fact: the OPTIMIZATION stage (each chunk of facts
gets its targets from the live model alone) and KPI scoring (each check, probe and text
is scored alone). An ``Executor`` runs both; the spread, the gates and the live pointer
stay with the caller.
"""
