"""lbbench's queueing L7 proxy: one object graph (exchange, client, upstream, backend, queue, balance, health)."""
