"""Built-in plugins. Each module is one entry point and imports only `comfyui_server.core`."""
