"""Think: what the visitor is doing now (session) and has done before (profile), joined
across their identities."""
