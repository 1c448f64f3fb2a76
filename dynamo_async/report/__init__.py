"""Reports a person looks at: ``dynamo-async plot`` (PNG figures of a run directory) and
``dynamo-async status`` (a live terminal view of a running learner).

    rundata.py   metrics.jsonl and the Arrow store of a run -> arrays per step
    plots.py     the figures (matplotlib, no display needed)
    status.py    the live view, from the buffer's status endpoint
"""
