"""Models and prompts: loading (``load_model``: ``"smollm2"``, ``"tiny"``, a directory or a hub
id; SmolLM2's GGUF conversion; ``random_llama``), prompts and their parts, hook names, block
replay, and the hook helpers every edit shares (safe in-place edits, left padding).

May import: ``at_probe.runs``.
"""
