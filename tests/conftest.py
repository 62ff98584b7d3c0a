"""Shared pytest fixtures (each kept in its own module under tests/support/).

The built-in world is imported as the `frozen-scale` command imports it, so that its config
sections, prep source and eval items are registered in every test, whichever are selected
(tests/unit/world/test_registration.py checks the library without it, in a fresh process)."""

import frozen_scale.world  # noqa: F401
from tests.support.core_fixtures import node_cache, tiny_lm_dir, tiny_run_config, tiny_shards  # noqa: F401
from tests.support.s3_server import s3_server  # noqa: F401  (a local S3 server, session-scoped)
