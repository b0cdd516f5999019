"""Ingress dialects: client wire formats <-> canonical types. Pure functions, no I/O."""
