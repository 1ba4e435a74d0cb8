"""The S3-compatible HTTP gateway: SigV4 auth, aws-chunked bodies, S3 handlers over petrel."""
