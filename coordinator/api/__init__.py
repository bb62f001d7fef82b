"""The HTTP API: one module of routes per capability, each a thin translation onto the use cases in custody/."""
