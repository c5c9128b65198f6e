"""smcdiff.diffusion (under construction)."""
