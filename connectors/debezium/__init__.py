"""Debezium connector: a database's change topics on Kafka as change events.

Debezium writes one record per row change: a JSON envelope, with or without the Kafka
Connect ``schema`` wrapper (``value.converter.schemas.enable``), holding ``op`` (``c``
create, ``u`` update, ``r`` snapshot read, ``d`` delete), the row ``before`` and
``after``, and a ``source`` block saying where in the database's log it happened; a
delete is followed by a tombstone (a null value) for log compaction. Rows become
documents with the same text template and metadata columns as the SQL connector
(:mod:`connectors.kit.rows`), so a table gives the same documents either way.

**Versions are owned here, per key** (:mod:`connectors.kit.keystates`): a change's version
is its place in the database's log (PostgreSQL ``source.lsn``; MySQL's binlog ``file``
number, ``pos`` and ``row``, see :func:`change_version`; other connectors ``source.ts_ms``),
but never at or below the last version this source emitted or reserved for the row,
deletions included (:func:`pipeline.sources.next_version`). One row's changes reach its
topic partition in the database's commit order, so **topic order decides**: a log position
that goes backwards (a database restored from a dump, a MySQL ``RESET MASTER`` or failover)
never makes a change stale; it is applied, logged as a warning and counted
(:attr:`DebeziumSource.positions_backwards`).

**Tombstones delete.** A consumer lagging behind log compaction may find only the tombstone
of a delete: it deletes its key's document, numbered above the key's last version. A
tombstone of a key this source never saw (its checkpoint is newer than the index) is
deleted by reconciliation (:meth:`DebeziumSource.orphans`), above the index's own version.

**The unavailable-value placeholder is never text.** With PostgreSQL's default replica
identity, an UPDATE that does not touch a TOASTed column carries Debezium's
``unavailable.value.placeholder`` in it: the column did not change. When every other column
the document is made of equals what this source last indexed (per-column digests in the
checkpoint), the document did not change: nothing is emitted (``unavailable_value_kept``).
Otherwise its new text is not known here (the checkpoint keeps digests, not text): the
record is dead-lettered (``unavailable_value``) saying to set ``REPLICA IDENTITY FULL``;
the index keeps the last text until the next full change of the row.

**``--key`` must be the primary key.** Deletes (``before`` holds only the primary key) and
tombstones (only the record key) name the row by its primary key, so documents are always
named by the record key; a ``--key`` naming another column is a :class:`ConfigError` at the
first record that shows it.

**Checkpoints**: the consumer group's offsets, committed only after the changes were
delivered (indexed, or published to ``<prefix>.changes``), then the per-key states (SQLite,
one file per source); a crash in between re-reads nothing, and the versions reserved
before publishing keep the next ones above. A pass polls until the topics are drained,
then ends. Changes must reach the runner in topic order: run it with deletions left in
place (``allow_mass_delete=True``), since an offset commit covers every earlier record of
its partition. The per-key checkpoint is local: run one daemon per source name (or give
them one state directory).
"""

from connectors.debezium.envelope import (
    UNAVAILABLE_VALUE,
    RowChange,
    UnavailableValue,
    change_version,
    parse_change,
    record_doc_id,
)
from connectors.debezium.source import DebeziumSource, DebeziumTopics, Polling

__all__ = [
    "UNAVAILABLE_VALUE",
    "DebeziumSource",
    "DebeziumTopics",
    "Polling",
    "RowChange",
    "UnavailableValue",
    "change_version",
    "parse_change",
    "record_doc_id",
]
