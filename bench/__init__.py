"""fastfvae's benchmarks (pytest-benchmark; DESIGN.md §14). See bench/README.md."""
