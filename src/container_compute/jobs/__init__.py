"""Jobs: N tasks of one command, recorded durably, scheduled, retried, and their results kept.

``model`` (states, index ranges) and ``params`` (typed action parameters) describe a job;
``ledger`` (SQLite WAL) is the single source of truth; ``submission`` checks and records a
job; ``scheduler`` runs attempts on a backend, ``outcomes`` commits each exactly once,
``housekeeping`` resumes, cancels, reaps and expires; ``results`` keeps the results tree and
the joblog; ``status`` reports; ``runner`` opens the engine every front end uses.
"""
