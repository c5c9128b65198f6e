"""smcdiff.gaussian (under construction)."""
