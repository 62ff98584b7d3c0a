"""Constants shared across layers: process exit codes and the shard manifest format.

Exit codes of `frozen-scale train` (and of every launcher that wraps it):

    EXIT_OK          0   finished
    EXIT_USER_ERROR  2   a mistake the user can fix (config.UserError), said in one line; as for
                         a command-line usage error
    EXIT_NONFINITE   3   too many non-finite losses in a row
    EXIT_REQUEUE    75   preempted after committing a checkpoint: requeue the job, it resumes

75 is EX_TEMPFAIL of sysexits.h ("try again later"), what SLURM and Ray scripts test for.

Shards: data_prep writes `manifest.json` at the root of a shard folder, in SHARDS_FORMAT
(`data_prep.manifest` describes the fields), and the loader reads it.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_NONFINITE = 3
EXIT_REQUEUE = 75

SHARDS_FORMAT = "frozen_scale.shards/1"
"""The `format` field of a shard folder's manifest.json."""
SHARDS_MANIFEST = "manifest.json"
"""The manifest's name at the root of a shard folder."""
