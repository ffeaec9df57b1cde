"""var-engine benchmarks: each module prints a table and writes JSON (and PNGs) to bench/results/."""
