"""The Redis tier: the only package that imports redis."""
