#!/usr/bin/env python3
"""Test requirer: submits two requests when related, goes active once both are finished."""

import json

import ops
from charms.container_compute.v0.compute_jobs import ComputeJobsRequires, JobRequest

SQUARE = "echo $((TASK_INDEX * TASK_INDEX)) > /results/square"


class RequirerCharm(ops.CharmBase):
    """Ask for a valid and an invalid job; report both."""

    def __init__(self, framework: ops.Framework) -> None:
        super().__init__(framework)
        self.jobs = ComputeJobsRequires(self, "compute-jobs")
        framework.observe(self.on["compute-jobs"].relation_joined, self._on_joined)
        framework.observe(self.on.reports_action, self._on_reports)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_joined(self, _: ops.RelationJoinedEvent) -> None:
        if self.unit.is_leader():
            self.jobs.submit("squares", JobRequest(command=SQUARE, tasks=3))
            self.jobs.submit("broken", JobRequest(command="true", tasks=-1))

    def _on_reports(self, event: ops.ActionEvent) -> None:
        reports = {k: r.to_dict() for k, r in self.jobs.reports().items()}
        event.set_results({"reports": json.dumps(reports)})

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        reports = self.jobs.reports()
        if len(reports) == 2 and all(r.finished for r in reports.values()):
            event.add_status(ops.ActiveStatus("all jobs reported"))
        else:
            event.add_status(ops.WaitingStatus(f"{len(reports)} of 2 reported"))


if __name__ == "__main__":
    ops.main(RequirerCharm)
