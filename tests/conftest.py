"""Shared fixtures. Fixture modules live beside this file and are loaded by name."""

pytest_plugins = ["fixtures_db", "fixtures_app", "fixtures_s3", "fixtures_browser"]
