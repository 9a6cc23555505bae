"""Database: Piccolo tables, committed migrations and engine set-up (SQLite or PostgreSQL)."""
