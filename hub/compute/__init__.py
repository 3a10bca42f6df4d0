"""Outsourced computation: masked sparse solves done by compute providers and checked twice (seed 002, section 4)."""
