#!/usr/bin/env python3
"""Test requirer: submits two requests when related, more on demand; reports what it hears."""

import json

import ops
from charms.container_compute.v0.compute_jobs import ComputeJobsRequires, JobRequest

SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


class RequirerCharm(ops.CharmBase):
    """Ask for a valid and an invalid job, then whatever the submit action asks; report all."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.jobs = ComputeJobsRequires(self, "compute-jobs")
        framework.observe(self.on["compute-jobs"].relation_joined, self._on_joined)
        framework.observe(self.on.reports_action, self._on_reports)
        framework.observe(self.on.submit_action, self._on_submit)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_joined(self, _: ops.RelationJoinedEvent) -> None:
        if self.unit.is_leader() and not self._submitted():
            self.jobs.submit("squares", JobRequest(command=SQUARE, tasks=3))
            self.jobs.submit("broken", JobRequest(command="true", tasks=-1))

    def _on_reports(self, event: ops.ActionEvent) -> None:
        reports = {k: r.to_dict() for k, r in self.jobs.reports().items()}
        event.set_results({"reports": json.dumps(reports)})

    def _on_submit(self, event: ops.ActionEvent) -> None:
        request = JobRequest(command=event.params["command"], tasks=event.params["tasks"])
        try:
            self.jobs.submit(event.params["id"], request)
        except (ValueError, RuntimeError) as e:
            event.fail(str(e))

    def _submitted(self) -> set[str]:
        """The request ids this application asked for (the leader reads its own databag)."""
        relation = self.jobs.relation
        if relation is None or not self.unit.is_leader():
            return set()
        return set(json.loads(relation.data[self.app].get("requests") or "{}"))

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        reports = self.jobs.reports()
        asked = self._submitted() or set(reports)
        finished = {k for k, r in reports.items() if r.finished}
        if asked and asked <= finished:
            event.add_status(ops.ActiveStatus(f"all {len(asked)} jobs reported"))
        else:
            event.add_status(
                ops.WaitingStatus(f"{len(finished & asked)} of {len(asked)} reported")
            )


if __name__ == "__main__":
    ops.main(RequirerCharm)
