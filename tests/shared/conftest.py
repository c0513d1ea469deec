"""The real S3 server (SeaweedFS on loopback) for the checkpoint store tests."""
from tests.s3_server import aws_env, s3_server  # noqa: F401 - fixtures, used by name
