"""Prometheus metrics of the job agent: instruments, the ledger sampler, the HTTP endpoint.

This package's ``__init__`` imports nothing: the backends count into ``instruments`` without
pulling in the sampler (which reads the jobs package).
"""
