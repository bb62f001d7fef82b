"""The web console: pages per capability, with their templates and static files."""
