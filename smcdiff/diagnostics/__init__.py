"""smcdiff.diagnostics (under construction)."""
