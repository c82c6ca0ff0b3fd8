"""Point-in-time recovery for PostgreSQL: the WAL archive (push, ship, get), its window, restores to a moment and drills."""
