"""Server-rendered pages and small static JS modules for crowd workers, experts and admins."""
