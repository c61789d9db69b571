"""Sub-commands of ``kml``, one module per area."""
