"""Load tests, benchmarks and the seeded meme corpus they share."""
