"""The catalog: the items and content that decisions choose from."""
