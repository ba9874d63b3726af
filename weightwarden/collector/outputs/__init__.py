"""Alert outputs: a persistent outbox in the database, and the receivers it feeds (syslog, webhook, MQTT)."""
