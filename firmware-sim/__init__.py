"""Simulated meters and gateways for tests, demos, field rehearsal and load tests.

* `meter`: the pure dynamics of one meter, three-phase or single-phase: household or
  business load, PV with a daily curve, EV charging sessions, energy counters that are the
  exact integral of power, and the meter's own clock (which a fault can make drift).
* `profiles`: what a device serves, as a register map plus fixed words (SunSpec's marker
  and model headers): any built-in map, a map file, or a SunSpec layout.
* `faults`: the faults a simulated meter can show and their command-line specs.
* `modbus_server`: up to 247 meters behind one Modbus TCP port or one RTU serial line
  (pymodbus' own servers), faults switchable per unit while serving.
* `fleet`: thousands of meters in one process over consecutive TCP ports.
* `mqtt_meter`: meters that publish JSON readings to an MQTT broker.
* `cli`: the `gridtrace sim` commands.

Imported as `firmware_sim`.
"""
