"""PostgreSQL: pg_dump/pg_restore of one database, and the cluster globals beside it."""
