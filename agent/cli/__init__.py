"""vmctl: the operator command-line client."""
