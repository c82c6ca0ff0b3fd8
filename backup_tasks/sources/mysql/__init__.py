"""MySQL and MariaDB: a consistent hot dump of one database, and its restore through the client."""
