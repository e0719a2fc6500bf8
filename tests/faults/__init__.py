"""The fault and load suite: a real master under client load, with faults injected.

Each test records its figures (requests sent, failed, time to recover) through the
``figures`` fixture; ``python -m tests.faults.report`` runs the suite and writes them
to ``docs/reliability.md`` (see that document).
"""
