"""Real-tissue benchmark: slides built from real H&E crops, simulated coarse annotations, and
the harness that scores every method on them (issue 4)."""
