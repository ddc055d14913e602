"""Prefect deployments of the flor-flows flows: `serve` entry point and `prefect.yaml`."""
