"""The report wing: reads run records, never writes them. Paired statistics, the
markdown report with its GPT and signal sections, claims, and the figures."""
