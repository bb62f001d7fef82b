"""The `custody` command: one module per capability, each a thin translation onto the use cases in custody/."""
