"""Example servers shipped with prefork: ``python -m prefork.examples.hello``."""
