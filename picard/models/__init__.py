"""Small models for tests, benchmarks and documentation, built offline from configs."""
