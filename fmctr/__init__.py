"""fmctr: Factorization Machines for click-through rates, from the command line."""

__version__ = "0.1.0"
