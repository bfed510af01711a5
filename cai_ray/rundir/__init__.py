"""The run directory, where every stage reads its inputs and writes its outputs, on a local disk
or object storage, as seen from any node of the cluster.

    layout.py    RunDir (manifest, stage folders, results), open_run_dir, RunLock, DiskWatch
    files.py     atomic writes, JSONL reads, the progress log, datasets saved both ways
    storage.py   s3:// (any pyarrow filesystem) run directories: pull, push, periodic sync
    nodeview.py  the run directory from an actor on another node: on_node, publish, gather
"""
