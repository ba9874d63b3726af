"""Example policies, shipped as package data (importlib.resources.files("weightwarden.policies"))."""
