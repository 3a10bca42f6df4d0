"""Contracts that run on sealed data: deterministic computations whose results go on chain."""
