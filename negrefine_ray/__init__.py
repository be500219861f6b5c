"""negrefine-ray: Ray-distributed zero-shot OOD evaluation with negative labels (NegRefine)."""

__version__ = "0.1.0"
