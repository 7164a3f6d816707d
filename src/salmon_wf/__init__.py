"""salmon-wf: principle-driven synthetic preference data for reward models (SALMON step 1)."""

__version__ = "0.1.0"
