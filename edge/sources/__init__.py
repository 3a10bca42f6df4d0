"""Meter sources: the I/O shells that fetch raw values from meters (Modbus TCP today).

Each source turns a transport's failures into `MeterReadError`s that say what a field
engineer should check; decoding stays in the pure register map code.
"""
