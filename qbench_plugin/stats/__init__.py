"""Noise: what a difference must beat before it counts. Bootstrap intervals over measurement rounds
and the run-to-run noise (uncertainty.py); the host-speed probe, timed every round, which tells the
host's drift between two runs from the code's (probe.py).

Pure: numbers in, numbers out. The matrix (measure), the gates, the comparison and the picks
(report) all take their intervals from here, so they agree on what is noise.

May import: nothing
"""
