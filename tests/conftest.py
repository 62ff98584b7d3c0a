"""Shared pytest fixtures (each kept in its own module)."""

try:  # run as `python -m pytest` from the repo root, or plain `pytest`
    from tests.s3_server import s3_server  # noqa: F401  (a local S3 server, session-scoped)
except ImportError:  # pragma: no cover
    from s3_server import s3_server  # noqa: F401

try:
    from tests.core_fixtures import node_cache, tiny_lm_dir, tiny_run_config, tiny_shards  # noqa: F401
except ImportError:  # pragma: no cover
    from core_fixtures import node_cache, tiny_lm_dir, tiny_run_config, tiny_shards  # noqa: F401
