"""Benchmarks of comfyui-server against the physical floor (the emulator driven directly).

Run with `nox -s bench` or `python -m bench`; results go to docs/benchmarks.md.
"""
