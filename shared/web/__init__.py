"""HTTP: the app factory, middleware, uploads, the error contract, operations routes and the schema."""
