"""Small helpers shared by the upper layers: atomic I/O, seeds."""
