"""declarem: Expectation-Maximization derived from a declared model."""
