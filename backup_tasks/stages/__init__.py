"""Stream filters: each reads and writes in chunks, so no stage holds an artifact in memory."""
