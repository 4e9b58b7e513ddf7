"""Results: parsing lm-eval's output (lmeval, samples), the statistics built on it (stats:
recovery intervals, paired tests, verdicts; suites: suite scores), the run summary, and the
result cache (cache)."""
