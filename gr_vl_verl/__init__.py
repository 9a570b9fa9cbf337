"""GuardReasoner-VL reasoning safety guards trained with verl."""

__version__ = "0.1.0"
