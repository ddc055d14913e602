"""Prefect flows: recipes over `flor_flows`, where the work lives."""
