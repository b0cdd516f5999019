"""The only package that knows ASGI: thin handlers, the app factory."""
