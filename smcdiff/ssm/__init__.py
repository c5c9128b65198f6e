"""smcdiff.ssm (under construction)."""
