"""Fine-tuning's gauges on ``/metrics`` (read at scrape time from the job store and the running trainers):

* ``llamarock_customization_jobs{status}``: model customization jobs by status;
* ``llamarock_customization_job_steps{job,state}``: each running job's ``done`` and ``total`` training steps, and
  ``checkpoint`` (the steps its last checkpoint holds: a restarted server resumes there);
* ``llamarock_customization_job_epoch{job}``: the epoch of its last step (from 0);
* ``llamarock_customization_job_loss{job,kind}``: its last ``training`` loss and last ``validation`` loss;
* ``llamarock_customization_job_steps_per_second{job}``: its pace since its trainer (re)started.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamarock.services.customization import CustomizationService


class CustomizationCollector(Collector):
    """The fine-tuning gauges of one app."""

    def __init__(self, service: CustomizationService) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("llamarock_customization_jobs", "Model customization jobs by status.",
                                 labels=["status"])
        for status, count in sorted(self.service.jobs.counts_by_status().items()):
            jobs.add_metric([status], count)
        yield jobs
        steps = GaugeMetricFamily("llamarock_customization_job_steps",
                                  "Training steps of each running fine-tuning job.", labels=["job", "state"])
        epoch = GaugeMetricFamily("llamarock_customization_job_epoch",
                                  "Epoch (from 0) of each running fine-tuning job's last step.", labels=["job"])
        loss = GaugeMetricFamily("llamarock_customization_job_loss",
                                 "Last training and validation loss of each running fine-tuning job.",
                                 labels=["job", "kind"])
        pace = GaugeMetricFamily("llamarock_customization_job_steps_per_second",
                                 "Training steps per second of each running fine-tuning job.", labels=["job"])
        for job_id, live in list(self.service.live.items()):
            counts = (("done", live.step), ("total", live.total_steps), ("checkpoint", live.checkpoint_step))
            for state, value in counts:
                steps.add_metric([job_id, state], value)
            epoch.add_metric([job_id], live.epoch)
            for kind, last in (("training", live.training_loss), ("validation", live.validation_loss)):
                if last is not None:
                    loss.add_metric([job_id, kind], last)
            pace.add_metric([job_id], live.rate())
        yield steps
        yield epoch
        yield loss
        yield pace
