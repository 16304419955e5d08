"""Test doubles for comfyui-server: a protocol-faithful ComfyUI emulator and its pytest fixtures."""
