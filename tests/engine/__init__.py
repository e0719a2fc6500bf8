"""End-to-end tests of the prefork engine: real processes, real signals, real clients.

``app.py`` is a small prefork server program built from command-line options;
``harness.py`` starts it as a subprocess, follows its output, and drives clients
against it.
"""
