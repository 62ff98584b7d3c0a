"""Shared pytest fixtures (each kept in its own module under tests/support/)."""

from tests.support.core_fixtures import node_cache, tiny_lm_dir, tiny_run_config, tiny_shards  # noqa: F401
from tests.support.s3_server import s3_server  # noqa: F401  (a local S3 server, session-scoped)
