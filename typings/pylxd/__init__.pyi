# Type stub for pylxd, whose managers (client.instances, .profiles, ...) are built at run time.
# Attributes of a Client are typed Any so that pyright checks our code, not pylxd's dynamics.
from typing import Any

from . import exceptions as exceptions

class Client:
    api: Any
    host_info: dict[str, Any]
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def __getattr__(self, name: str) -> Any: ...
