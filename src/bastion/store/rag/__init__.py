"""RAG storage backends: embedded (SQLite + in-memory indexes) and PostgreSQL + pgvector."""
