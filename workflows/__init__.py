"""Built-in workflow plugins: each folder ships an API-format export and its spec."""
