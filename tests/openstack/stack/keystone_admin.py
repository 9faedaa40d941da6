"""Keystone's admin API through keystoneauth1 (the product's own dependency): no other client."""

from typing import Any

from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

TIMEOUT = 30


class KeystoneAdmin:
    """Create (or find) domains, projects, roles, users, grants and catalog entries."""

    def __init__(self, auth_url: str, password: str) -> None:
        """Authenticate as the bootstrap admin (project admin, domain Default)."""
        self.base = auth_url.rstrip("/")
        auth = v3.Password(
            auth_url=self.base,
            username="admin",
            password=password,
            project_name="admin",
            user_domain_id="default",
            project_domain_id="default",
        )
        self.session = ks_session.Session(auth=auth, timeout=TIMEOUT)

    def _find(self, collection: str, **query: str) -> dict[str, Any] | None:
        found = self.session.get(f"{self.base}/{collection}", params=query).json()[collection]
        return found[0] if found else None

    def _ensure(self, collection: str, body: dict[str, Any], **query: str) -> str:
        existing = self._find(collection, **query)
        if existing is not None:
            return existing["id"]
        singular = collection[:-1]
        return self.session.post(f"{self.base}/{collection}", json={singular: body}).json()[
            singular
        ]["id"]

    def domain(self, name: str) -> str:
        """The id of domain ``name`` (created if missing)."""
        return self._ensure("domains", {"name": name}, name=name)

    def project(self, name: str, domain_id: str = "default") -> str:
        """The id of project ``name`` in a domain (created if missing)."""
        body = {"name": name, "domain_id": domain_id}
        return self._ensure("projects", body, name=name, domain_id=domain_id)

    def role(self, name: str) -> str:
        """The id of role ``name`` (created if missing; names are case-sensitive here)."""
        return self._ensure("roles", {"name": name}, name=name)

    def implies(self, prior: str, implied: str) -> None:
        """Make role ``prior`` imply role ``implied`` (ids); nothing if it already does."""
        url = f"{self.base}/roles/{prior}/implies/{implied}"
        if self.session.head(url, raise_exc=False).status_code != 204:
            self.session.put(url)

    def user(
        self, name: str, password: str, domain_id: str = "default", project_id: str = ""
    ) -> str:
        """The id of user ``name`` in a domain (created with this password if missing)."""
        body: dict[str, Any] = {"name": name, "password": password, "domain_id": domain_id}
        if project_id:
            body["default_project_id"] = project_id
        return self._ensure("users", body, name=name, domain_id=domain_id)

    def grant(
        self, role_id: str, user_id: str, *, project_id: str = "", domain_id: str = ""
    ) -> None:
        """Grant a role to a user on a project or a domain."""
        target = f"projects/{project_id}" if project_id else f"domains/{domain_id}"
        self.session.put(f"{self.base}/{target}/users/{user_id}/roles/{role_id}")

    def service(self, name: str, kind: str, url: str, region: str = "RegionOne") -> None:
        """Register a service and its public, internal and admin endpoints at ``url``."""
        service_id = self._ensure("services", {"name": name, "type": kind}, type=kind)
        for interface in ("public", "internal", "admin"):
            if self._find("endpoints", service_id=service_id, interface=interface) is None:
                self.session.post(
                    f"{self.base}/endpoints",
                    json={
                        "endpoint": {
                            "service_id": service_id,
                            "interface": interface,
                            "url": url,
                            "region_id": region,
                        }
                    },
                )
