"""The PostgreSQL connector: configuration, trio-native connections, pools, logical replication."""
