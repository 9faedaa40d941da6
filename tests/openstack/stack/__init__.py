"""A private OpenStack on 127.0.0.1 for the tests: real services, started once per session.

``OpenStackStack`` brings up PostgreSQL and RabbitMQ (Debian packages, private instances),
libvirtd with its LXC driver (in a mount namespace of its own), Keystone, Glance, Placement
and Nova (API, metadata API, conductor, scheduler, compute with ``virt_type=lxc``) from PyPI,
plus a Neutron stand-in (``neutron_standin``: Neutron does not run here; nothing else is a
stand-in). Everything lives under ``/var/tmp/cc-openstack-<random>`` on ports of its own, and
``stop`` removes every process, domain, mount and loop device it made.
"""

from .layout import Layout
from .stack import OpenStackStack

__all__ = ["Layout", "OpenStackStack"]
