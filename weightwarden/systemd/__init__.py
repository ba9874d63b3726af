"""The systemd units, shipped as package data (importlib.resources.files("weightwarden.systemd"))."""
