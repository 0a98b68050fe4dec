"""Operating-system helpers: process supervision, namespaces, the parent<->child control channel, timers, host stats."""
