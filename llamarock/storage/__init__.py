"""Metadata storage: the SQL database (SQLite by default, any SQLAlchemy URL) and the secret key beside it."""
