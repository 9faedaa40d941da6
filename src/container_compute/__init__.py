"""container-compute: LXD hosts as a compute farm, without Juju knowledge.

The library configures LXD on a host (``host``), runs jobs of independent tasks in worker
containers (``engine``, ``backends``) and gathers their results (``results``). It never imports
``ops``: the charm in ``src/charm.py`` and the ``container-compute`` command both call it.
"""

__version__ = "0.1.0"
