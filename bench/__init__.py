"""aiokprod's bench suite: ``python -m bench`` (see bench/README.md). The single-purpose benches
bench_codec.py, bench_handle.py and bench_producer.py beside it run as scripts."""
