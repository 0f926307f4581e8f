"""KPIs of an edited model: efficacy, paraphrase, neighbourhood, fluency."""
