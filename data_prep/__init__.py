"""data_prep: image-text corpora -> webdataset shards on any fsspec URL, spread over Ray.

    sources.py    URL tables -> numbered rows -> work units (file_sources.py: image folders, COCO captions)
    generated.py  sources that make their samples (the built-in world registers one), their prep commands
    fetch.py      one sample's bytes: http(s) download with retries, or a file read
    deadline.py   a download's deadline, enforced by a watchdog that shuts its socket
    netguard.py   the private-network guard: which addresses a download may connect to
    imaging.py    safe decode, filters, resize, encode
    shard.py      one work unit -> NNNNN.tar + NNNNN.parquet + NNNNN_stats.json (commit marker)
    dedup.py      job-wide exact dedup of image content, by input order (a Ray actor)
    progress.py   rows done across the job, reported from inside shard tasks
    pipeline.py   the Ray job: bounded in flight, retries, resume, progress, manifest.json
                  (or, in_process, the same job without Ray)
    manifest.py   committed shards and the job manifest the trainer reads
    cli.py        `frozen-scale prep ...`
"""
