"""Tests of the ``prefork`` command: the real command in a subprocess."""
