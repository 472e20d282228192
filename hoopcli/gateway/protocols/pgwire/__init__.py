"""The PostgreSQL wire engine in pieces; `..postgres.PostgresEngine` puts them together."""
