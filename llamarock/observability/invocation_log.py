"""Model invocation logging: Bedrock's log records for every invocation, delivered to the blob store.

:class:`InvocationLog` is an invocation observer. While a region has a logging configuration
(PutModelInvocationLoggingConfiguration), :meth:`InvocationLog.record` turns each finished invocation into the start
of a log record and appends it to the :class:`~llamarock.observability.invocation_spool.Spool` — one small SQLite
insert, never a network call, so logging can neither fail nor slow an invocation. A delivery thread takes batches
from the spool and writes them out:

- ``s3Config``: one gzipped object per batch, one JSON record per line, under
  ``<keyPrefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/<time>_<batch>.json.gz``; a body
  larger than 100 KB goes to ``.../data/<record uuid>_input.json.gz`` (or ``_output``) and the record names it.
- ``cloudWatchConfig``: llamarock has no CloudWatch Logs, so the log group becomes a folder of JSON-lines files,
  ``<data_dir>/cloudwatch-logs/<logGroupName>/aws/bedrock/modelinvocations/<time>_<batch>.jsonl``; large bodies go
  to ``largeDataDeliveryS3Config`` when given and are left out otherwise. ``roleArn`` is checked for its shape only.

Rows leave the spool only after their batch was written. While the sink is down, the thread retries with a doubling
wait (up to ``invocation_log_retry_max_s``), and a claimed batch always goes to the same object key, so every record
arrives exactly once. When the spool is full, new records are dropped, counted and logged. ``counts`` holds the
delivery counters of Bedrock's CloudWatch metrics (``ModelInvocationLogsS3DeliverySuccess``, ...), counted in records
(large-data counters in objects), plus ``ModelInvocationLogsDropped``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from llamarock.errors import ValidationException
from llamarock.observability.invocation_log_record import complete_record, record_meta
from llamarock.observability.invocation_spool import Batch, Spool, SpoolError
from llamarock.observability.records import InvocationRecord
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStore, BlobStoreError
from llamarock.storage.logging_config import LoggingConfigStore

log = logging.getLogger(__name__)

ROLE_ARN_PATTERN = "arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+"
LOG_GROUP_NAME = re.compile(r"^[\.\-_/#A-Za-z0-9]+$")  # CloudWatch Logs' rule for log group names
CLOUDWATCH_STREAM = "aws/bedrock/modelinvocations"
_FIRST_RETRY_S = 0.5
_CONFIG_REFRESH_S = 5.0


def log_prefix(key_prefix: str, account: str, region: str) -> str:
    """``<keyPrefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>`` (no leading or doubled slash)."""
    return "/".join(p for p in (key_prefix.strip("/"), "AWSLogs", account, "BedrockModelInvocationLogs", region) if p)


def _gzip(data: bytes) -> bytes:
    # mtime=0: the same records always make the same bytes, so a retried put rewrites an identical object.
    return gzip.compress(data, mtime=0)


class InvocationLog:
    """The observer, the logging configuration it follows and the delivery thread (see the module docstring)."""

    def __init__(self, settings: Settings, blobs: BlobStore, configs: LoggingConfigStore) -> None:
        self._settings = settings
        self.blobs = blobs
        self._config_store = configs
        self._spool_path = settings.data_dir / "spool" / "invocation-logs.db"
        self._spool: Spool | None = None
        self._configs: dict[str, dict[str, Any]] = {}
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._outage_since: float | None = None
        self._drop_logged_at = 0.0
        self.counts: Counter[str] = Counter()

    # -- configuration (the control-plane handlers call these from a worker thread) --------------------------------

    def get_config(self, region: str) -> dict[str, Any] | None:
        """The region's ``loggingConfig`` as it was put, or None."""
        return self._config_store.get(region)

    def put_config(self, region: str, config: dict[str, Any]) -> None:
        """Validate ``config`` as Bedrock does (destinations must be reachable), store it and start following it."""
        self._validate(config)
        self._config_store.put(region, config)
        self._configs[region] = config
        self.start()

    def delete_config(self, region: str) -> None:
        """Stop logging in ``region``; records already spooled are still delivered."""
        self._config_store.delete(region)
        self._configs.pop(region, None)

    def _validate(self, config: dict[str, Any]) -> None:
        s3 = config.get("s3Config")
        cloudwatch = config.get("cloudWatchConfig")
        if s3 is None and cloudwatch is None:
            raise ValidationException(
                "loggingConfig needs a destination: s3Config (a bucket in llamarock's blob store) and/or "
                "cloudWatchConfig. To turn invocation logging off, call DeleteModelInvocationLoggingConfiguration."
            )
        if cloudwatch is not None:
            role = cloudwatch["roleArn"]
            if not re.fullmatch(ROLE_ARN_PATTERN, role):
                raise ValidationException(
                    f"1 validation error detected: Value '{role}' at 'loggingConfig.cloudWatchConfig.roleArn' failed "
                    f"to satisfy constraint: Member must satisfy regular expression pattern: {ROLE_ARN_PATTERN}"
                )
            group = cloudwatch["logGroupName"]
            if not LOG_GROUP_NAME.match(group) or {".", ".."} & set(group.split("/")):
                raise ValidationException(
                    f"Invalid log group name {group!r}: use letters, digits and . - _ / # (no '.' or '..' parts)."
                )
            if cloudwatch.get("largeDataDeliveryS3Config"):
                self._check_bucket(cloudwatch["largeDataDeliveryS3Config"]["bucketName"])
        if s3 is not None:
            self._check_bucket(s3["bucketName"])

    def _check_bucket(self, bucket: str) -> None:
        try:
            exists = self.blobs.bucket_exists(bucket)
        except BlobStoreError as error:
            raise ValidationException(
                f"Failed to validate permissions for log delivery bucket: {bucket}. {error}. Check "
                "blob_store_url and its credentials."
            ) from error
        if not exists:
            raise ValidationException(
                f"Failed to validate permissions for log delivery bucket: {bucket}. The bucket does not exist in "
                f"{self.blobs.location}; create it first (for the local folder store: mkdir <blob folder>/{bucket})."
            )

    # -- the observer ----------------------------------------------------------------------------------------------

    def record(self, record: InvocationRecord) -> None:
        """Spool the log record of one invocation when its region logs invocations. Never raises, never waits on I/O
        beyond one local SQLite insert."""
        self.start()
        config = self._configs.get(record.region)
        if config is None or self._spool is None:
            return
        account = self._settings.account_id
        destination = self._destination(config, account, record.region)
        text = config.get("textDataDeliveryEnabled", True) is not False
        meta = record_meta(record, account)
        input_body = record.input_body if text else None
        output_body = None
        if text and record.output_body is not None:
            output_body = json.dumps(record.output_body, ensure_ascii=False, default=str).encode()
        hour = meta["timestamp"][:13]
        if self._spool.append(destination, hour, json.dumps(meta).encode(), input_body, output_body):
            self._wake.set()
        else:
            self._dropped(1)

    @staticmethod
    def _destination(config: dict[str, Any], account: str, region: str) -> str:
        s3 = config.get("s3Config")
        cloudwatch = config.get("cloudWatchConfig")
        large = (cloudwatch or {}).get("largeDataDeliveryS3Config")
        return json.dumps({
            "account": account,
            "region": region,
            "s3": {"bucket": s3["bucketName"], "prefix": s3.get("keyPrefix", "")} if s3 else None,
            "cloudWatch": {
                "group": cloudwatch["logGroupName"],
                "large": {"bucket": large["bucketName"], "prefix": large.get("keyPrefix", "")} if large else None,
            } if cloudwatch else None,
            # Absent delivery flags count as on: a configuration that names a destination wants records in it.
            "images": config.get("imageDataDeliveryEnabled", True) is not False,
        }, sort_keys=True)

    def _dropped(self, count: int) -> None:
        self.counts["ModelInvocationLogsDropped"] += count
        now = time.monotonic()
        if now - self._drop_logged_at > 60:
            self._drop_logged_at = now
            log.warning(
                "invocation-log spool %s is full (%d of %d bytes) or unwritable: dropped %d records so far; raise "
                "invocation_log_spool_max_bytes or bring the blob store back", self._spool_path,
                self._spool.size if self._spool else 0, self._settings.invocation_log_spool_max_bytes,
                self.counts["ModelInvocationLogsDropped"],
            )

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool, load the configurations and start delivering (idempotent; ``record`` calls it too)."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            self._started = True  # also after a failure: do not retry on every invocation
            try:
                self._spool = Spool(self._spool_path, self._settings.invocation_log_spool_max_bytes)
                self._configs = self._config_store.all()
            except Exception:
                log.exception("model invocation logging cannot start; invocations are not logged")
                return
            self._thread = threading.Thread(target=self._run, name="invocation-log-delivery", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        """Records waiting in the spool."""
        return self._spool.pending() if self._spool is not None else 0

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is spooled (while the sink answers, for up to ``timeout_s``) and stop. What cannot be
        delivered stays in the spool for the next start."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("invocation-log delivery still busy after %.0f s; records stay spooled", timeout_s)
                return
        if self._spool is not None:
            self._spool.close()
        self.blobs.close()

    # -- delivery (its own thread) ---------------------------------------------------------------------------------

    def _run(self) -> None:
        assert self._spool is not None
        backoff = _FIRST_RETRY_S
        refreshed = time.monotonic()
        while True:
            if time.monotonic() - refreshed > _CONFIG_REFRESH_S:
                refreshed = time.monotonic()
                # Another server sharing the database (or the CLI) may have changed a configuration.
                with contextlib.suppress(Exception):
                    self._configs = self._config_store.all()
            self._wake.clear()
            try:
                batches = self._spool.next_batches()
                failure = next((e for e in map(self._deliver_one, batches) if e is not None), None)
            except SpoolError as error:
                failure = error
                batches = []
            if failure is not None:
                self._outage(failure)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self._settings.invocation_log_retry_max_s)
                continue
            backoff = _FIRST_RETRY_S
            if self._outage_since is not None:
                log.info("invocation-log delivery works again after %.0f s", time.monotonic() - self._outage_since)
                self._outage_since = None
            if not batches:
                if self._stop.is_set():
                    return
                self._wake.wait(1.0)

    def _outage(self, error: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("cannot deliver invocation logs (%s); %d records wait in the spool and are retried",
                        error, self.pending())
        else:
            log.debug("invocation-log delivery still failing: %s", error)

    def _deliver_one(self, batch: Batch) -> Exception | None:
        """Write one batch and forget it; the error when the sink failed (the batch stays for a retry)."""
        assert self._spool is not None
        try:
            self._deliver(batch)
        except (BlobStoreError, OSError) as error:
            return error
        except Exception:
            # A record that cannot be turned into a log line would block the queue forever: drop it, loudly.
            log.exception("invocation-log batch %s cannot be built; its %d records are dropped", batch.id,
                          len(batch.records))
            self.counts["ModelInvocationLogsDropped"] += len(batch.records)
        self._spool.remove(batch.id)
        return None

    def _deliver(self, batch: Batch) -> None:
        destination = json.loads(batch.destination)
        account, region = destination["account"], destination["region"]
        stamp = json.loads(batch.records[0].meta)["timestamp"].replace("-", "").replace(":", "")
        name = f"{stamp}_{batch.id}"
        if destination["s3"] is not None:
            bucket, prefix = destination["s3"]["bucket"], destination["s3"]["prefix"]
            lines = self._lines(batch, destination["images"], bucket, log_prefix(prefix, account, region))
            hour = batch.hour.replace("-", "/").replace("T", "/")
            key = f"{log_prefix(prefix, account, region)}/{hour}/{name}.json.gz"
            try:
                self.blobs.put(bucket, key, _gzip(lines))
            except BlobStoreError:
                self.counts["ModelInvocationLogsS3DeliveryFailure"] += len(batch.records)
                raise
            self.counts["ModelInvocationLogsS3DeliverySuccess"] += len(batch.records)
        if destination["cloudWatch"] is not None:
            cloudwatch = destination["cloudWatch"]
            large = cloudwatch["large"]
            lines = self._lines(
                batch, destination["images"], large["bucket"] if large else None,
                log_prefix(large["prefix"], account, region) if large else "",
            )
            try:
                self._write_cloudwatch(cloudwatch["group"], f"{name}.jsonl", lines)
            except OSError:
                self.counts["ModelInvocationLogsCloudWatchDeliveryFailure"] += len(batch.records)
                raise
            self.counts["ModelInvocationLogsCloudWatchDeliverySuccess"] += len(batch.records)

    def _lines(self, batch: Batch, images: bool, large_bucket: str | None, base: str) -> bytes:
        lines = []
        for spooled in batch.records:
            def offload(kind: str, data: bytes, uuid: str = spooled.uuid) -> str | None:
                if large_bucket is None:
                    return None
                key = f"{base}/data/{uuid}_{kind}.json.gz"
                try:
                    self.blobs.put(large_bucket, key, _gzip(data))
                except BlobStoreError:
                    self.counts["ModelInvocationLargeDataS3DeliveryFailure"] += 1
                    raise
                self.counts["ModelInvocationLargeDataS3DeliverySuccess"] += 1
                return f"s3://{large_bucket}/{key}"

            record = complete_record(spooled.meta, spooled.input_body, spooled.output_body, images=images,
                                     offload=offload)
            lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
        return ("\n".join(lines) + "\n").encode()

    def _write_cloudwatch(self, group: str, name: str, data: bytes) -> None:
        folder = self.cloudwatch_folder(group)
        folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            os.replace(temporary, folder / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def cloudwatch_folder(self, group: str) -> Path:
        """Where the records of a CloudWatch log group are written (one ``.jsonl`` file per batch)."""
        return self._settings.data_dir.joinpath("cloudwatch-logs", *[p for p in group.split("/") if p],
                                                *CLOUDWATCH_STREAM.split("/"))
