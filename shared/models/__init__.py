"""Model code: the backbone, base keywords and styles, custom heads and state archives."""
