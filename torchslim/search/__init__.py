"""The search behind `optimize`: trying candidates, the float fallback, interleaved timing, the choice, replay."""
