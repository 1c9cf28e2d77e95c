"""Storage: the object store, the Redis data model and the training queue."""
