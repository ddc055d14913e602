"""Continuous training: what the training and retraining flows do, as plain functions.

`request` holds the typed flow parameters, `launch` versions code and data and runs the
script, `arrivals` hands out newly arrived batches exactly once, `artifacts` turns a run's
records into the tables a flow run publishes.
"""

__all__ = ["arrivals", "artifacts", "launch", "request"]
