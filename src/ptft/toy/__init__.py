"""toy stage."""
