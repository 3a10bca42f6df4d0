"""The gateway agent: reads meters, queues readings durably, signs batches, streams them to a hub.

Light by design: nothing here imports the hub's database or numerical stack.
"""
