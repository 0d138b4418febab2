"""Node-side projections of the log: folded state for reads, and (later) the data planes."""
