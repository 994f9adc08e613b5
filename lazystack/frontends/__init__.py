"""Front ends: the command line, the demo, plotting."""
