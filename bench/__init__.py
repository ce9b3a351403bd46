"""fastfvae's benchmarks (pytest-benchmark; DESIGN.md §9). See bench/README.md."""
