"""Text generation with causal language models: loading, measurement, quality, search."""
