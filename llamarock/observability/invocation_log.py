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

A ``keyPrefix`` (and a bucket name) is checked at Put so that every key llamarock makes from it is a valid S3 key
and a path inside its bucket folder in the local store (:func:`key_prefix_problem`, ``MAX_KEY_PREFIX_BYTES``).

Rows leave the spool only after their batch was written. Delivery is isolated per *destination* (account, region,
bucket and prefix, log group): a batch that fails is retried with a doubling wait (from 0.5 s up to
``invocation_log_retry_max_s``) for its destination alone, while the batches of every other destination keep
flowing. A claimed batch always goes to the same object key, so every record arrives exactly once. A destination
that is still configured is retried until it works (the spool's bound applies); one whose configuration was
deleted or replaced since its records were spooled is still tried, and given up — its records dropped, counted and
logged as an error — after ``STALE_MAX_ATTEMPTS`` failed attempts or once its oldest record is
``STALE_MAX_AGE_S`` old. A destination that breaks today's rules (spooled, or stored, by an older version) is
never written to: a stored configuration like that is ignored (logged once) and its spooled records are dropped.
A record that cannot be turned into a log line is dropped, counted and logged. When the spool is full, new records
are dropped, counted and logged. ``counts`` holds the delivery counters of Bedrock's CloudWatch metrics
(``ModelInvocationLogsS3DeliverySuccess``, ...), counted in records (large-data counters in objects), plus
``ModelInvocationLogsDropped``.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llamarock.errors import ValidationException
from llamarock.observability.invocation_log_record import complete_record, record_meta
from llamarock.observability.invocation_spool import Batch, Spool, SpoolError
from llamarock.observability.records import InvocationRecord
from llamarock.settings import Settings
from llamarock.storage.blobs import BUCKET_RULES, BlobStore, BlobStoreError, bucket_name_problem
from llamarock.storage.logging_config import LoggingConfigStore

log = logging.getLogger(__name__)

ROLE_ARN_PATTERN = "arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+"
LOG_GROUP_NAME = re.compile(r"^[\.\-_/#A-Za-z0-9]+$")  # CloudWatch Logs' rule for log group names
CLOUDWATCH_STREAM = "aws/bedrock/modelinvocations"
_FIRST_RETRY_S = 0.5
_CONFIG_REFRESH_S = 5.0

# What llamarock appends to a key prefix, at its longest: "/AWSLogs/<12-digit account>/BedrockModelInvocationLogs/
# <region>" (a SigV4 region is at most 64 characters), then either "/YYYY/MM/DD/HH/<YYYYMMDDTHHMMSSZ>_<32 hex>.json.gz"
# (a batch) or "/data/<36-character uuid>_output.json.gz" (a large body). S3 keys are at most 1,024 bytes of UTF-8.
_MAX_REGION_CHARS = 64
KEY_SUFFIX_BYTES = len("/AWSLogs/") + 12 + len("/BedrockModelInvocationLogs/") + _MAX_REGION_CHARS + max(
    len("/YYYY/MM/DD/HH/") + len("YYYYMMDDTHHMMSSZ_") + 32 + len(".json.gz"),
    len("/data/") + 36 + len("_output.json.gz"),
)
MAX_KEY_PREFIX_BYTES = 1024 - KEY_SUFFIX_BYTES  # 839
MAX_SEGMENT_BYTES = 255  # a file name in the local folder store (and most file systems)
KEY_PREFIX_RULES = (
    f"A keyPrefix is '/'-separated segments of 1 to {MAX_SEGMENT_BYTES} bytes each, none '.' or '..', with no "
    f"leading or doubled '/', backslash or control character, and at most {MAX_KEY_PREFIX_BYTES:,} bytes of UTF-8 in "
    f"all (S3's 1,024-byte key limit less the {KEY_SUFFIX_BYTES} bytes of '/AWSLogs/<account>/"
    "BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/<file>.json.gz' llamarock appends); one trailing '/' is "
    "allowed, e.g. 'bedrock/team-a/'"
)

# A destination that is no longer configured is given up after this many failed attempts in a row, or once its
# oldest waiting record is this old (whichever comes first); one still configured is retried until it works.
STALE_MAX_ATTEMPTS = 8
STALE_MAX_AGE_S = 3600.0


def log_prefix(key_prefix: str, account: str, region: str) -> str:
    """``<keyPrefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>`` (no leading or doubled slash)."""
    return "/".join(p for p in (key_prefix.strip("/"), "AWSLogs", account, "BedrockModelInvocationLogs", region) if p)


def key_prefix_problem(prefix: str) -> str | None:
    """What keeps ``prefix`` from being a key prefix every blob store can hold (``KEY_PREFIX_RULES``), or None."""
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid Unicode text (it has a lone surrogate)"
    if size > MAX_KEY_PREFIX_BYTES:
        return f"it is {size:,} bytes long in UTF-8, more than {MAX_KEY_PREFIX_BYTES:,}"
    control = sorted({c for c in prefix if ord(c) < 0x20 or ord(c) == 0x7F})
    if control:
        return f"it contains a control character ({', '.join(f'U+{ord(c):04X}' for c in control)})"
    if "\\" in prefix:
        return "it contains a backslash"
    if not prefix:
        return None
    if prefix.startswith("/"):
        return "it starts with '/'"
    segments = prefix.removesuffix("/").split("/")
    for number, segment in enumerate(segments, 1):
        if segment == "":
            return "it has an empty segment ('//')"
        if segment in (".", ".."):
            return f"segment {number} is {segment!r}"
        length = len(segment.encode("utf-8"))
        if length > MAX_SEGMENT_BYTES:
            return f"segment {number} is {length} bytes long, more than {MAX_SEGMENT_BYTES}"
    return None


def log_group_ok(group: str) -> bool:
    """Whether ``group`` is a log group name llamarock can make a folder of (see ``cloudwatch_folder``)."""
    parts = group.split("/")
    return bool(LOG_GROUP_NAME.match(group)) and not {".", ".."} & set(parts) and \
        max(map(len, parts)) <= MAX_SEGMENT_BYTES


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:60] + "...")


def _invalid(value: str, field: str, what: str, problem: str, rules: str) -> ValidationException:
    return ValidationException(
        f"1 validation error detected: Value {_shown(value)} at '{field}' failed to satisfy constraint: Member must "
        f"be a valid {what}, but {problem}. {rules}."
    )


def check_s3_destination(s3: dict[str, Any], field: str) -> None:
    """Raise Bedrock's ValidationException when an ``S3Config`` (at ``field``) names a bucket or a key prefix that
    cannot be written to."""
    bucket = s3["bucketName"]
    problem = bucket_name_problem(bucket)
    if problem is not None:
        raise _invalid(bucket, f"{field}.bucketName", "S3 bucket name", problem, BUCKET_RULES)
    prefix = s3.get("keyPrefix", "")
    problem = key_prefix_problem(prefix)
    if problem is not None:
        raise _invalid(prefix, f"{field}.keyPrefix", "S3 key prefix", problem, KEY_PREFIX_RULES)


def check_config(config: dict[str, Any]) -> None:
    """Raise Bedrock's ValidationException when ``loggingConfig`` is not one llamarock can deliver to; everything
    but whether the buckets exist (see :meth:`InvocationLog.put_config`)."""
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
        if not log_group_ok(group):
            raise ValidationException(
                f"Invalid log group name {_shown(group)}: use letters, digits and . - _ / # (no '.' or '..' parts, "
                f"none longer than {MAX_SEGMENT_BYTES} characters)."
            )
        if cloudwatch.get("largeDataDeliveryS3Config"):
            check_s3_destination(cloudwatch["largeDataDeliveryS3Config"],
                                 "loggingConfig.cloudWatchConfig.largeDataDeliveryS3Config")
    if s3 is not None:
        check_s3_destination(s3, "loggingConfig.s3Config")


def config_problem(config: Any) -> str | None:
    """Why a stored ``loggingConfig`` cannot be followed (it breaks :func:`check_config`), or None."""
    try:
        check_config(config)
    except ValidationException as error:
        return str(error)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        return f"it is malformed ({type(error).__name__}: {error})"
    return None


def _s3_problem(bucket: str, prefix: str) -> str | None:
    problem = bucket_name_problem(bucket)
    if problem is not None:
        return f"bucket name {_shown(bucket)}: {problem}"
    problem = key_prefix_problem(prefix)
    return f"keyPrefix {_shown(prefix)}: {problem}" if problem is not None else None


def _destination_problem(destination: str) -> str | None:
    """Why a spooled batch's destination must not be written to (it breaks today's rules), or None."""
    try:
        parsed = json.loads(destination)
        s3, cloudwatch = parsed["s3"], parsed["cloudWatch"]
        problem = _s3_problem(s3["bucket"], s3["prefix"]) if s3 is not None else None
        if problem is None and cloudwatch is not None:
            group, large = cloudwatch["group"], cloudwatch["large"]
            if not log_group_ok(group):
                problem = f"log group name {_shown(group)}"
            elif large is not None:
                problem = _s3_problem(large["bucket"], large["prefix"])
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        return f"it is malformed ({type(error).__name__}: {error})"
    return problem


def _describe(destination: str) -> str:
    """A destination, for the server log."""
    try:
        parsed = json.loads(destination)
    except ValueError:
        return repr(destination[:200])
    where = []
    if parsed.get("s3"):
        where.append(f"s3://{parsed['s3'].get('bucket')}/{parsed['s3'].get('prefix')!s}")
    if parsed.get("cloudWatch"):
        where.append(f"log group {parsed['cloudWatch'].get('group')}")
    return f"region {parsed.get('region')} ({', '.join(where) or 'nowhere'})"


def _age_s(batch: Batch) -> float:
    """Seconds since the batch's oldest record was made (0 when its time cannot be read)."""
    try:
        stamp = json.loads(batch.records[0].meta)["timestamp"]
        made = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (ValueError, KeyError, TypeError, IndexError):
        return 0.0
    return max(0.0, (datetime.now(UTC) - made).total_seconds())


@dataclass
class _Retry:
    """A destination whose last delivery failed: failures in a row, when to try again, since when it fails."""

    failures: int
    next_at: float
    since: float


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
        self._outage_since: float | None = None  # the spool itself cannot be read
        self._retries: dict[str, _Retry] = {}  # destinations waiting out a backoff (delivery thread only)
        self._ignored: set[str] = set()  # stored configurations already logged as invalid
        self._drop_logged_at = 0.0
        self.counts: Counter[str] = Counter()

    # -- configuration (the control-plane handlers call these from a worker thread) --------------------------------

    def get_config(self, region: str) -> dict[str, Any] | None:
        """The region's ``loggingConfig`` as it was put, or None."""
        return self._config_store.get(region)

    def put_config(self, region: str, config: dict[str, Any]) -> None:
        """Validate ``config`` as Bedrock does (destinations must be reachable), store it and start following it."""
        check_config(config)
        cloudwatch = config.get("cloudWatchConfig") or {}
        if cloudwatch.get("largeDataDeliveryS3Config"):
            self._check_bucket(cloudwatch["largeDataDeliveryS3Config"]["bucketName"])
        if config.get("s3Config") is not None:
            self._check_bucket(config["s3Config"]["bucketName"])
        self._config_store.put(region, config)
        self._configs[region] = config
        self.start()

    def delete_config(self, region: str) -> None:
        """Stop logging in ``region``; records already spooled are still delivered (see the module docstring)."""
        self._config_store.delete(region)
        self._configs.pop(region, None)

    def _load_configs(self) -> dict[str, dict[str, Any]]:
        """The stored configurations that can be followed; one that cannot (stored by an older version under older
        rules) is left out, and logged the first time it is seen."""
        configs = {}
        for region, config in self._config_store.all().items():
            problem = config_problem(config)
            if problem is None:
                configs[region] = config
                continue
            seen = f"{region}\n{json.dumps(config, sort_keys=True, default=str)}"
            if seen not in self._ignored:
                self._ignored.add(seen)
                log.error(
                    "the stored model invocation logging configuration of region %s is invalid and is ignored: "
                    "invocations there are not logged, and records spooled for it are dropped. Put a valid one "
                    "(PutModelInvocationLoggingConfiguration) or delete it. %s", region, problem,
                )
        return configs

    def _check_bucket(self, bucket: str) -> None:
        try:
            exists = self.blobs.bucket_exists(bucket)
        except BlobStoreError as error:
            log.warning("log delivery bucket %r cannot be checked in %s: %s", bucket, self.blobs.where, error)
            raise ValidationException(
                f"Failed to validate permissions for log delivery bucket: {bucket}. {error}. Check "
                "blob_store_url and its credentials."
            ) from error
        if not exists:
            log.info("log delivery bucket %r does not exist in %s", bucket, self.blobs.where)
            raise ValidationException(
                f"Failed to validate permissions for log delivery bucket: {bucket}. The bucket does not exist in "
                f"{self.blobs.location}; {self.blobs.create_hint(bucket)}."
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
                self._configs = self._load_configs()
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
        spool_backoff = _FIRST_RETRY_S
        refreshed = time.monotonic()
        while True:
            if time.monotonic() - refreshed > _CONFIG_REFRESH_S:
                refreshed = time.monotonic()
                # Another server sharing the database (or the CLI) may have changed a configuration.
                with contextlib.suppress(Exception):
                    self._configs = self._load_configs()
            self._wake.clear()
            now = time.monotonic()
            waiting = {destination for destination, retry in self._retries.items() if retry.next_at > now}
            try:
                batches = self._spool.next_batches(skip=waiting)
                moved = self._deliver_all(batches, waiting)
            except SpoolError as error:
                self._spool_outage(error)
                if self._stop.wait(spool_backoff):
                    return
                spool_backoff = min(spool_backoff * 2, self._settings.invocation_log_retry_max_s)
                continue
            spool_backoff = _FIRST_RETRY_S
            if self._outage_since is not None:
                log.info("the invocation-log spool works again after %.0f s", time.monotonic() - self._outage_since)
                self._outage_since = None
            if moved:
                continue
            if self._stop.is_set():
                return
            # Nothing could move: sleep until a destination's retry is due or a new record arrives.
            due = min((retry.next_at for retry in self._retries.values()), default=now + 1.0)
            self._wake.wait(min(1.0, max(0.01, due - time.monotonic())))

    def _deliver_all(self, batches: list[Batch], waiting: set[str]) -> bool:
        """Deliver each batch whose destination has not failed (before or in this round); whether any left the
        spool."""
        current = self._current_destinations()
        present = {batch.destination for batch in batches}
        for destination in [d for d in self._retries if d not in waiting and d not in present]:
            del self._retries[destination]  # due for a retry but nothing of it is left to deliver
        moved = False
        for batch in batches:
            if batch.destination in waiting:
                continue
            problem = _destination_problem(batch.destination)
            if problem is not None:
                self._give_up(batch.destination, f"its destination breaks today's rules ({problem})")
                moved = True
                continue
            error = self._deliver_one(batch)
            if error is None:
                moved = True
                self._recovered(batch.destination)
                continue
            waiting.add(batch.destination)
            self._failed(batch, error, current)
        return moved

    def _current_destinations(self) -> set[str]:
        """The destinations of the configurations followed now."""
        account = self._settings.account_id
        current = set()
        for region, config in list(self._configs.items()):
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                current.add(self._destination(config, account, region))
        return current

    def _failed(self, batch: Batch, error: Exception, current: set[str]) -> None:
        """Back the batch's destination off; give it up when it is no longer configured and has failed enough."""
        destination = batch.destination
        now = time.monotonic()
        retry = self._retries.get(destination)
        if retry is None:
            retry = self._retries[destination] = _Retry(0, now, now)
            log.warning(
                "cannot deliver invocation logs to %s in %s (%s); its records wait in the spool and are retried "
                "with backoff (other destinations are not held up)", _describe(destination), self.blobs.where, error,
            )
        else:
            log.debug("invocation-log delivery to %s still failing: %s", _describe(destination), error)
        retry.failures += 1
        first = min(_FIRST_RETRY_S, self._settings.invocation_log_retry_max_s)
        retry.next_at = now + min(first * 2 ** min(retry.failures - 1, 30), self._settings.invocation_log_retry_max_s)
        if destination in current:
            return
        age = _age_s(batch)
        if retry.failures >= STALE_MAX_ATTEMPTS or age >= STALE_MAX_AGE_S:
            self._give_up(destination, (
                f"its configuration was deleted or replaced, and it failed {retry.failures} times in a row over "
                f"{now - retry.since:.0f} s (oldest record {age:.0f} s old): {error}"
            ))

    def _give_up(self, destination: str, why: str) -> None:
        assert self._spool is not None
        dropped = self._spool.drop_destination(destination)
        self._retries.pop(destination, None)
        self.counts["ModelInvocationLogsDropped"] += dropped
        log.error("invocation logs for %s given up: %d spooled records dropped, because %s", _describe(destination),
                  dropped, why)

    def _recovered(self, destination: str) -> None:
        retry = self._retries.pop(destination, None)
        if retry is not None:
            log.info("invocation-log delivery to %s works again after %.0f s (%d failed attempts)",
                     _describe(destination), time.monotonic() - retry.since, retry.failures)

    def _spool_outage(self, error: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning("cannot read the invocation-log spool (%s); retrying", error)
        else:
            log.debug("invocation-log spool still failing: %s", error)

    def _deliver_one(self, batch: Batch) -> Exception | None:
        """Write one batch and forget it; the error when the sink failed (the batch stays for a retry)."""
        assert self._spool is not None
        try:
            self._deliver(batch)
        except (BlobStoreError, OSError) as error:
            return error
        except Exception:
            # A record that cannot be turned into a log line would block its destination forever: drop it, loudly.
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
