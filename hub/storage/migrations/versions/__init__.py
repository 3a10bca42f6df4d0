"""Revisions of the hub database, oldest first by their numbered file names."""
