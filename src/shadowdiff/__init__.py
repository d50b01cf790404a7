"""shadowdiff: mirror a sampled share of live traffic to a shadow, compare off the live path."""

__version__ = "0.1.0"
