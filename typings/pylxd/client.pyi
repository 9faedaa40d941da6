# Type stub for pylxd.client: the one function container-compute calls there.
from typing import Any

import requests

def get_session_for_url(url: str, verify: Any = ..., cert: Any = ...) -> requests.Session: ...
