"""The fleet's shared words and records: specs, settings, events, the event log, analytics.

The lowest layer: it imports no other package of this project.
"""
