"""Few-step students distilled from trained flow-matching teachers (rectified-flow reflow)."""
