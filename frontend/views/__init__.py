"""Pages, one module per area: home, imports, labelling, review, dashboard, training."""
