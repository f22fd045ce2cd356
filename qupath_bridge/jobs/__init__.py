"""What the CLI commands do, one module per command, as functions tests call directly.

Jobs import the bridge's shared modules (slide_io, summaries, outputs, memory, project),
never each other.
"""
