"""The speed bench of container-compute (``tox -e bench``): figures printed, never asserted."""
