"""The one schema (SQLAlchemy Core) and its Alembic migrations."""
