"""`make bench`: speed and memory figures, printed as ratios measured side by side."""
