"""Loaders: sources opened into stacks (``load_*``, ``load``, ``propose_axes``) and the list they return."""
