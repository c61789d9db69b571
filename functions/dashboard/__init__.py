"""The dashboard: web pages over register's read API, the results topic and prediction topics."""
