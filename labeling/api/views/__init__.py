"""API views, one module per area: projects, imports, crowd, review, aggregation, exports."""
