# Sourced once by the mariadb image's entrypoint on an empty data directory
# (docker-entrypoint-initdb.d; sourced, not run, because the file is not executable).
# Creates a sample "shop" database and the backup user. docker_process_sql is the
# entrypoint's own function: it authenticates as root without putting the password on
# argv. The password comes from deploy/compose/backup-tasks.env and travels on stdin.

docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS shop;
CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, item VARCHAR(100) NOT NULL, placed DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP);
INSERT INTO shop.orders (item) VALUES ('pencil'), ('notebook'), ('ruler');
-- RELOAD: the worker holds FLUSH TABLES WITH READ LOCK until the dump's snapshot is open
CREATE USER 'backup'@'%' IDENTIFIED BY '$SHOP_DB_PASSWORD';
GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, RELOAD, PROCESS ON *.* TO 'backup'@'%';
SQL
