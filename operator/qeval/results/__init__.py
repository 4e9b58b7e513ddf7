"""Results: parsing lm-eval's output and the statistics built on it (recovery and its error)."""
