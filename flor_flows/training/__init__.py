"""Continuous training: what the training and retraining flows do, as plain functions.

`request` holds the typed flow parameters, `launch` versions code and data, hands the
script its run context and accounts for how it ended (`flor_flows.children` runs it),
`arrivals` hands out newly arrived batches exactly once, `artifacts` turns a run's records
into the tables a flow run publishes.
"""

__all__ = ["arrivals", "artifacts", "launch", "request"]
