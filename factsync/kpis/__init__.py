"""The KPI vocabulary every floor shares: metric names and the typed KPI report."""
