"""insectarium: a dripline 3 slow-control and data-run lab."""

__version__ = "0.1.0"
