"""S3 operation handlers: one function per operation, named after it (snake_case)."""
