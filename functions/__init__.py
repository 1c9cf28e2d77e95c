"""One small stateless Starlette app per endpoint group; each module exposes ``routes`` and ``app``."""
