"""Projects, items, import, assignment, votes, gold, aggregation and expert review."""
