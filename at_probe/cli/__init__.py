"""The commands: one module per analysis (``python analyses/<name>.py`` and ``at-probe <name>``
run the same ``main``), their shared argument parser and flag types (``args``).

May import: every other subpackage (the top layer).
"""
