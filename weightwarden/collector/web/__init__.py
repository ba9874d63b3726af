"""``weightwarden-collector serve``: the security operations console and its JSON API."""
