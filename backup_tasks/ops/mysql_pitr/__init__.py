"""Point-in-time recovery for MySQL/MariaDB: binlog shipping, its window, replay to a moment, retention and drills."""
