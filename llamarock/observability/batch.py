"""Batch inference's observability: each record's usage (billed as batch), and the jobs' gauges on ``/metrics``.

Gauges (read from the metadata database at scrape time):

* ``llamarock_batch_jobs{status}``: model invocation jobs by status;
* ``llamarock_batch_job_records{job,state}``: the records of each unfinished job, ``state`` one of ``total``,
  ``processed``, ``succeeded``, ``failed``;
* ``llamarock_batch_job_records_per_second{job}``: the pace of each running job since it (re)started.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import UsageRecorder
from llamarock.services.batch import BatchJob, BatchService
from llamarock.services.batch_records import RecordOutcome


def batch_biller(usage: UsageRecorder) -> Callable[[BatchJob, RecordOutcome], None]:
    """What a batch job calls for each record that ran: a usage record of its invocation type, billed as batch."""

    def bill(job: BatchJob, outcome: RecordOutcome) -> None:
        usage.record(InvocationRecord(
            request_id=str(uuid.uuid4()), operation=job.invocation_type, model_identifier=job.model_id,
            principal_arn=job.caller_arn, region=job.region, model_id=outcome.model_id,
            deployment=outcome.deployment, status=200 if outcome.ok else int(outcome.output["error"]["errorCode"]),
            input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens,
            provisioned_model_arn=outcome.provisioned_arn, batch_job_arn=job.arn,
        ))

    return bill


class BatchCollector(Collector):
    """The batch gauges of one app."""

    def __init__(self, batch: BatchService) -> None:
        self.batch = batch

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("llamarock_batch_jobs", "Model invocation jobs by status.", labels=["status"])
        for status, count in sorted(self.batch.store.counts_by_status().items()):
            jobs.add_metric([status], count)
        yield jobs
        records = GaugeMetricFamily("llamarock_batch_job_records", "Records of each unfinished model invocation job.",
                                    labels=["job", "state"])
        pace = GaugeMetricFamily("llamarock_batch_job_records_per_second",
                                 "Records per second of each running model invocation job.", labels=["job"])
        for job in self.batch.store.unfinished():
            for state, value in (("total", job.total or 0), ("processed", job.processed),
                                 ("succeeded", job.succeeded), ("failed", job.errors)):
                records.add_metric([job.job_id, state], value)
            progress = self.batch.progress.get(job.job_id)
            if progress is not None:
                pace.add_metric([job.job_id], progress.rate())
        yield records
        yield pace
