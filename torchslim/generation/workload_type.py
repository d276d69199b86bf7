"""Text generation's workload type (found by search/workload_type.discover): defined in search.py."""
from .search import TextGeneration

__all__ = ["TextGeneration"]
