"""The harness: the loop that calls the model, manages its context and routes tool calls.

Above ``core`` and ``sandboxes``; below ``actors``. Nothing here knows about Ray.
"""
