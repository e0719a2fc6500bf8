"""Side-by-side benchmarks of prefork against the standard library and other servers.

Run ``python -m bench --help``; see ``bench/README.md``.
"""
