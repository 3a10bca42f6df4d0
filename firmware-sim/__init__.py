"""Simulated meters and gateways for tests, demos and benchmarks.

`meter` holds the pure dynamics of a simulated three-phase meter; `modbus_server` serves a
fleet of them over Modbus TCP with pymodbus, with faults that can be switched on per unit;
`cli` adds the `gridtrace sim` commands. Imported as `firmware_sim`.
"""
