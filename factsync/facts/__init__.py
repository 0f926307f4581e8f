"""The fact vocabulary shared by connectors, the store and the daemon: records and relations."""
