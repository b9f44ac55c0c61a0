//! The delivery queue's tables and statements. Every key leads with the destination
//! (`peer`), and each statement touches one destination, so the tables can be distributed
//! by it when one primary is no longer enough.

use fedsx_pg::Migration;

/// The component name under which the queue's schema version is recorded.
pub const COMPONENT: &str = "delivery";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "peers, leases and deliveries",
        sql: r#"
        CREATE SEQUENCE delivery_order;
        CREATE TABLE delivery_peers (
            peer text COLLATE "C" PRIMARY KEY,
            owner text NOT NULL DEFAULT '',
            lease_until bigint NOT NULL DEFAULT 0,
            delivered bigint NOT NULL DEFAULT 0,
            last_error text NOT NULL DEFAULT ''
        );
        CREATE TABLE delivery_items (
            peer text COLLATE "C" NOT NULL,
            id bytea NOT NULL,
            ord bigint NOT NULL,
            status smallint NOT NULL,
            inbox_url text NOT NULL,
            traceparent text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            next_retry_ms bigint NOT NULL DEFAULT 0,
            last_error text NOT NULL DEFAULT '',
            enqueued_ms bigint NOT NULL,
            envelope bytea,
            PRIMARY KEY (peer, id)
        );
        CREATE INDEX delivery_items_pending ON delivery_items (peer, ord) WHERE status = 0;
        CREATE INDEX delivery_items_dead ON delivery_items (peer, ord) WHERE status = 1;
    "#,
    },
    Migration {
        version: 2,
        name: "pending deliveries by retry time",
        // The next retry of a destination is looked up after every batch of sends: without
        // this it scanned every pending row of the destination.
        sql: "CREATE INDEX delivery_items_retry ON delivery_items (peer, next_retry_ms) WHERE status = 0;",
    },
    Migration {
        version: 3,
        name: "retry index over retries only",
        // The index of version 2 covered every pending row, so the planner (on young
        // statistics) answered "what is due" from it and sorted every pending row by order
        // on each call. Over retries only, it cannot serve that query, which walks the
        // pending rows in order and stops after the first few due.
        // Delivered rows leave dead entries at the head of the pending index until vacuumed:
        // vacuum and analyse this table at 2% changed rows instead of 20%.
        sql: "
            DROP INDEX delivery_items_retry;
            CREATE INDEX delivery_items_retrying ON delivery_items (peer, next_retry_ms)
                WHERE status = 0 AND next_retry_ms > 0;
            ALTER TABLE delivery_items SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);",
    },
    Migration {
        version: 4,
        name: "senders' lanes and recipients",
        // Queues are per destination node: each row carries its sender (one at a time per
        // sender, in order: the lanes index finds each sender's oldest pending row) and its
        // recipients there (a protobuf list). Rows from before are the unnamed sender's.
        sql: r#"
            ALTER TABLE delivery_items
                ADD COLUMN sender text COLLATE "C" NOT NULL DEFAULT '',
                ADD COLUMN recipients bytea;
            CREATE INDEX delivery_items_lanes ON delivery_items (peer, sender, ord) WHERE status = 0;
            CREATE INDEX delivery_items_delivered ON delivery_items (peer, enqueued_ms) WHERE status = 2;"#,
    },
    Migration {
        version: 5,
        name: "failing destinations",
        // Since when every send to the destination failed (ms since the epoch; 0: not
        // failing): past the unavailable period it takes no new deliveries until revived.
        sql: "ALTER TABLE delivery_peers ADD COLUMN failing_since bigint NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 6,
        name: "no queue-order index",
        // Due work is found through the senders' lanes since version 4; the queue-order index
        // only served the status's head lookup (which counts the pending rows anyway), yet
        // took an entry for every delivery queued and weighed in the planning of every
        // statement on the table.
        sql: "DROP INDEX delivery_items_pending;",
    },
];

/// Every statement here walks one destination's rows through an index, in queue order or
/// by id, and stops after the first few. On young statistics (a queue filled faster than
/// autovacuum analyses it) the planner prefers a bitmap scan for "what is due", which must
/// then sort every pending row of the destination on each call; and a generic plan made
/// while the table was nearly empty (a scan of all of it) is kept until autovacuum first
/// analyses the table. So: no bitmap scans, and each execution planned for the table as it
/// is (planning these statements costs far less than a scan of a large queue).
pub const SESSION_SETTINGS: [(&str, &str); 2] =
    [("enable_bitmapscan", "off"), ("plan_cache_mode", "force_custom_plan")];

pub const PENDING: i16 = 0;
pub const DEAD: i16 = 1;
// 2: delivered (written as a literal by the statements).

/// Where new pending work is announced; the payload is the peer.
pub const CHANNEL: &str = "fedsx_delivery_enqueued";

/// Queues a group of deliveries to one destination (`$2..$10`: ids, inbox URLs, trace
/// contexts, enqueue times, envelopes, senders, recipients, statuses — pending, or dead
/// when undeliverable — and errors), in the order given; all as dead letters when the
/// destination has been failing since before `$11` (unavailable), skipping the (peer, id) pairs
/// already known; answers the ids queued. The destination's row is only read when it
/// exists: `ON CONFLICT` alone would wait for every outcome being recorded on it. (Announced
/// afterwards, off the commit path: see `fedsx_pg::Notifier`.)
pub const ENQUEUE: &str = r#"
    WITH known AS (
        INSERT INTO delivery_peers (peer)
        SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM delivery_peers WHERE peer = $1)
        ON CONFLICT (peer) DO NOTHING
    ), unavailable AS (
        SELECT 'destination unavailable: every send has failed since '
            || to_char(to_timestamp(failing_since / 1000.0) AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"')
            AS reason
        FROM delivery_peers WHERE peer = $1 AND failing_since > 0 AND failing_since < $11
    ), given AS (
        SELECT * FROM unnest(
            $2::bytea[], $3::text[], $4::text[], $5::bigint[], $6::bytea[], $7::text[], $8::bytea[],
            $9::smallint[], $10::text[]
        ) WITH ORDINALITY AS t(id, inbox_url, traceparent, enqueued_ms, envelope, sender, recipients, status, last_error, n)
        ORDER BY n
    )
    INSERT INTO delivery_items
        (peer, id, ord, status, inbox_url, traceparent, enqueued_ms, envelope, sender, recipients, last_error)
    SELECT $1, id, nextval('delivery_order'),
        CASE WHEN u.reason IS NULL THEN status ELSE 1 END,
        inbox_url, traceparent, enqueued_ms, envelope, sender, recipients,
        CASE WHEN u.reason IS NULL OR status = 1 THEN last_error ELSE u.reason END
    FROM given LEFT JOIN unavailable u ON true
    ORDER BY given.n
    ON CONFLICT (peer, id) DO NOTHING
    RETURNING id"#;

/// Peers with pending work whose lease is `$1`'s, or lapsed before `$2`.
pub const CLAIMABLE: &str = "
    SELECT p.peer FROM delivery_peers p
    WHERE (p.owner = $1 OR p.lease_until < $2)
      AND EXISTS (SELECT 1 FROM delivery_items i WHERE i.peer = p.peer AND i.status = 0)
    ORDER BY p.lease_until, p.peer
    LIMIT $3";

/// Takes (or renews) one peer's lease, if it is still free, lapsed or ours.
pub const CLAIM: &str = "
    UPDATE delivery_peers SET owner = $1, lease_until = $3
    WHERE peer = $2 AND (owner = $1 OR lease_until < $4)
    RETURNING peer";

pub const RELEASE: &str =
    "UPDATE delivery_peers SET lease_until = 0 WHERE peer = $1 AND owner = $2 AND lease_until = $3";

/// Up to `$4` due rows, leaving out `$3`: of each sender's pending rows only the oldest (a
/// lane's head), if never tried (or redriven) or its retry time `$2` has come. The senders
/// are walked through the lanes index in name order, one probe each (a loose index scan
/// that lands on each lane's head), from after `$5` up to and including `$6` (NULL: no
/// bound), and the walk stops once `$4` are found: a call costs about as many probes as it
/// answers rows, however many senders have work queued. Answers each row's sender and
/// order too.
pub const DUE: &str = "
    WITH RECURSIVE lanes AS (
        (SELECT sender, ord, id, inbox_url, envelope, traceparent, attempts, recipients, next_retry_ms
         FROM delivery_items
         WHERE peer = $1 AND status = 0 AND ($5::text IS NULL OR sender > $5) AND ($6::text IS NULL OR sender <= $6)
         ORDER BY sender, ord LIMIT 1)
        UNION ALL
        SELECT next.* FROM lanes l CROSS JOIN LATERAL (
            SELECT sender, ord, id, inbox_url, envelope, traceparent, attempts, recipients, next_retry_ms
            FROM delivery_items i
            WHERE i.peer = $1 AND i.status = 0 AND i.sender > l.sender AND ($6::text IS NULL OR i.sender <= $6)
            ORDER BY i.sender, i.ord LIMIT 1
        ) AS next
    )
    SELECT id, inbox_url, envelope, traceparent, attempts, recipients, sender, ord FROM lanes
    WHERE next_retry_ms <= $2 AND NOT (id = ANY($3))
    LIMIT $4";

/// (`next_retry_ms > 0` lets it use the retry index; fresh rows have 0.)
pub const NEXT_RETRY: &str = "SELECT min(next_retry_ms) FROM delivery_items
    WHERE peer = $1 AND status = 0 AND next_retry_ms > 0 AND next_retry_ms > $2";

/// Records outcomes if `$2` holds the lease at `$3`, for the deliveries still pending:
/// `$4` the ids delivered, `$5..$9` the failed ones (ids, statuses — pending with a retry
/// time, or dead — attempts, retry times, errors); answers the ids recorded. The lease row
/// is locked for update from the start: a claim by another replica waits for this to
/// commit, and concurrent records of one destination queue up rather than deadlock on
/// upgrading a shared lock. One statement for a whole batch: one commit for all.
///
/// Delivered ones, nearly all of a batch, need no values of their own: they are updated by
/// id alone, a probe of the primary key each. Joined to a list of outcomes, the planner
/// made that a nested loop over the list for every row (a batch of 64 cost 4,096
/// comparisons). (`status < 1` is `status = 0`, written so the planner cannot answer it
/// from a pending-rows index on young statistics, and `id = ANY(…)` makes each id a probe
/// of the primary key: joined to the outcomes alone, before the table's first analyse, it
/// read all of the destination's rows for each batch.)
pub const RECORD: &str = "
    WITH lease AS (
        SELECT 1 FROM delivery_peers WHERE peer = $1 AND owner = $2 AND lease_until >= $3 FOR NO KEY UPDATE
    ), delivered AS (
        UPDATE delivery_items SET status = 2, next_retry_ms = 0, envelope = NULL
        WHERE peer = $1 AND id = ANY($4) AND status < 1 AND EXISTS (SELECT 1 FROM lease)
        RETURNING id
    ), outcome AS (
        SELECT * FROM unnest($5::bytea[], $6::smallint[], $7::integer[], $8::bigint[], $9::text[])
            AS t(id, status, attempts, next_retry_ms, last_error)
    ), failed AS (
        UPDATE delivery_items i SET
            status = o.status, attempts = o.attempts, next_retry_ms = o.next_retry_ms, last_error = o.last_error
        FROM outcome o
        WHERE i.peer = $1 AND i.id = ANY($5) AND i.id = o.id AND i.status < 1 AND EXISTS (SELECT 1 FROM lease)
        RETURNING i.id, o.last_error
    ), counted AS (
        UPDATE delivery_peers SET
            delivered = delivered + (SELECT count(*) FROM delivered),
            failing_since = CASE
                WHEN EXISTS (SELECT 1 FROM delivered) THEN 0
                WHEN failing_since = 0 THEN $3
                ELSE failing_since END,
            last_error = coalesce((SELECT last_error FROM failed LIMIT 1), last_error)
        WHERE peer = $1 AND (EXISTS (SELECT 1 FROM delivered) OR EXISTS (SELECT 1 FROM failed))
    )
    SELECT id FROM delivered UNION ALL SELECT id FROM failed";

pub const PEERS: &str = "SELECT peer FROM delivery_peers ORDER BY peer";

/// Forgets one destination's delivered rows enqueued before `$2`.
pub const EXPIRE: &str = "DELETE FROM delivery_items WHERE peer = $1 AND status = 2 AND enqueued_ms < $2";

pub const REVIVE: &str = "UPDATE delivery_peers SET failing_since = 0 WHERE peer = $1 RETURNING 1";

pub const PEER_EXISTS: &str = "SELECT 1 FROM delivery_peers WHERE peer = $1";

pub const REDRIVE: &str = "
    WITH moved AS (
        UPDATE delivery_items SET status = 0, attempts = 0, next_retry_ms = 0, ord = nextval('delivery_order')
        WHERE peer = $1 AND status = 1 AND ($2::bytea[] IS NULL OR id = ANY($2))
        RETURNING 1
    )
    SELECT count(*) FROM moved";

/// A peer's numbers (`$1` NULL: every peer).
pub const STATUS: &str = "
    SELECT p.peer, p.delivered, p.last_error, p.failing_since,
        (SELECT count(*) FROM delivery_items i WHERE i.peer = p.peer AND i.status = 0),
        (SELECT count(*) FROM delivery_items i WHERE i.peer = p.peer AND i.status = 1),
        h.attempts, h.next_retry_ms, h.enqueued_ms
    FROM delivery_peers p
    LEFT JOIN LATERAL (
        SELECT attempts, next_retry_ms, enqueued_ms FROM delivery_items i
        WHERE i.peer = p.peer AND i.status = 0 ORDER BY ord LIMIT 1
    ) AS h ON true
    WHERE $1::text IS NULL OR p.peer = $1
    ORDER BY p.peer";

pub const DEAD_LETTERS: &str = "SELECT id, attempts, last_error, sender, recipients, inbox_url FROM delivery_items WHERE peer = $1 AND status = 1 ORDER BY ord";
