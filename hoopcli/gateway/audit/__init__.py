"""The tamper-evident audit trail: records, the hash chain, stores, the writer, exporters.

    store = open_store("sqlite:///var/lib/hoop/audit.db")   # or postgresql://…
    writer = AuditWriter(store, [JsonLinesExporter("-")])
    writer.submit(new_record("statement", sub=…, statement="select 1", outcome="ok"))
    writer.close(); store.close()
"""

from .chain import GENESIS, VerifyReport, canonical, record_hash, verify_records
from .export import Exporter, JsonLinesExporter, WebhookExporter, read_jsonl
from .record import FIELDS, KINDS, format_ts, new_record, normalize
from .store import AuditStore, open_store
from .writer import AuditWriter

__all__ = [
    "FIELDS",
    "GENESIS",
    "KINDS",
    "AuditStore",
    "AuditWriter",
    "Exporter",
    "JsonLinesExporter",
    "VerifyReport",
    "WebhookExporter",
    "canonical",
    "format_ts",
    "new_record",
    "normalize",
    "open_store",
    "read_jsonl",
    "record_hash",
    "verify_records",
]
