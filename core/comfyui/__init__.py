"""Talking to ComfyUI: HTTP calls (`client`) and one websocket per endpoint (`monitor`)."""
