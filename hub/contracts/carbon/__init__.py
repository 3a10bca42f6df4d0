"""The carbon-flow contract: carbon emission flow from a solved power flow (see docs/carbon.md)."""
