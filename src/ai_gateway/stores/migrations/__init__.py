"""Alembic migrations, shipped inside the package so `ai-gateway db upgrade` works from a wheel."""
