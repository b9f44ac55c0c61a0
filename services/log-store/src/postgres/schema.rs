//! The log-store's tables and statements. Every key leads with the stream (actor, kind),
//! and no statement touches two streams, so the tables can be distributed by actor (Citus,
//! YugabyteDB) when one primary is no longer enough.

use fedsx_pg::Migration;

/// The component name under which the log-store's schema version is recorded.
pub const COMPONENT: &str = "log-store";

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "streams and entries",
        sql: r#"
        CREATE TABLE log_streams (
            actor text COLLATE "C" NOT NULL,
            kind smallint NOT NULL,
            tip bigint NOT NULL,
            PRIMARY KEY (actor, kind)
        );
        CREATE TABLE log_entries (
            actor text COLLATE "C" NOT NULL,
            kind smallint NOT NULL,
            seq bigint NOT NULL,
            id bytea NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (actor, kind, seq),
            UNIQUE (actor, kind, id)
        );
    "#,
    },
    Migration {
        version: 2,
        name: "tips read from the entries",
        // A stream's tip is its highest seq (seqs are dense from 1), found by the primary
        // key; keeping it in a row of its own cost every append a row lock and an update.
        sql: "DROP TABLE log_streams;",
    },
    Migration {
        version: 3,
        name: "watched streams",
        // Which streams have a waiting subscriber, and in which replica, until when (ms
        // since the epoch; renewed while watched): appends are announced to the other
        // replicas only for these.
        sql: r#"
        CREATE TABLE log_watches (
            actor text COLLATE "C" NOT NULL,
            kind smallint NOT NULL,
            replica text NOT NULL,
            until bigint NOT NULL,
            PRIMARY KEY (actor, kind, replica)
        );"#,
    },
    Migration {
        version: 4,
        name: "leases",
        // One row per lease (`postgres/lease.rs`); times are ms since the epoch on the
        // database's clock, `until_ms` 0 once released.
        sql: r#"
        CREATE TABLE log_leases (
            name text COLLATE "C" PRIMARY KEY,
            holder text NOT NULL,
            epoch bigint NOT NULL,
            until_ms bigint NOT NULL,
            data bytea NOT NULL
        );"#,
    },
];

/// Renews this replica's (`$3`) watches of the streams `$1`/`$2` until `$4`.
pub const WATCH: &str = "
    INSERT INTO log_watches (actor, kind, replica, until)
    SELECT actor, kind, $3, $4 FROM unnest($1::text[], $2::smallint[]) AS t(actor, kind)
    ON CONFLICT (actor, kind, replica) DO UPDATE SET until = excluded.until";

/// The streams other replicas than `$1` watch at `$2`, at most `$3`.
pub const WATCHED: &str = "
    SELECT DISTINCT actor, kind FROM log_watches WHERE replica <> $1 AND until > $2 LIMIT $3";

/// Forgets watches that lapsed before `$1`.
pub const UNWATCHED: &str = "DELETE FROM log_watches WHERE until < $1";

/// Where committed appends are announced; the payload is `<kind tag>:<actor>`.
pub const CHANNEL: &str = "fedsx_log_appended";

/// The stream's tip (first row, `id` null), then the seqs of those of the ids `$3` it
/// holds.
pub const STATE: &str = "
    SELECT coalesce(max(seq), 0) AS seq, NULL::bytea AS id FROM log_entries WHERE actor = $1 AND kind = $2
    UNION ALL
    SELECT seq, id FROM log_entries WHERE actor = $1 AND kind = $2 AND id = ANY($3)";

/// Writes a group's entries at the seqs planned for them, in one statement committed on
/// its own. Seqs are dense, so a plan made on a stale tip collides with the primary key,
/// and an id the stream holds already collides with the id key: either way nothing is
/// written, and the writer reads the stream again. (No NOTIFY here: see
/// `fedsx_pg::Notifier`.)
pub const WRITE: &str = "
    INSERT INTO log_entries (actor, kind, seq, id, data)
    SELECT $1, $2, seq, id, data FROM unnest($3::bigint[], $4::bytea[], $5::bytea[]) AS t(seq, id, data)";

/// [`WRITE`] for a group of one entry, the common case over many quiet streams: a plain
/// row costs the server less than arrays to unpack.
pub const WRITE_ONE: &str = "INSERT INTO log_entries (actor, kind, seq, id, data) VALUES ($1, $2, $3, $4, $5)";

/// The tip and a page after `$3`: at most `$4` entries, ending before the entry that
/// would take the page's data past `$5` bytes (the first entry always included). One
/// statement, so tip and entries come from one snapshot.
pub const READ_PAGE: &str = r#"
    SELECT t.tip, p.seq, p.id, p.data
    FROM (SELECT coalesce(max(seq), 0) AS tip FROM log_entries WHERE actor = $1 AND kind = $2) AS t
    LEFT JOIN LATERAL (
        SELECT seq, id, data FROM (
            SELECT seq, id, data, sum(octet_length(data)) OVER w AS upto, row_number() OVER w AS n
            FROM (
                SELECT seq, id, data FROM log_entries
                WHERE actor = $1 AND kind = $2 AND seq > $3
                ORDER BY seq LIMIT $4
            ) AS limited
            WINDOW w AS (ORDER BY seq)
        ) AS sized
        WHERE upto <= $5 OR n = 1
    ) AS p ON true
    ORDER BY p.seq"#;

pub const TIP: &str = "SELECT coalesce(max(seq), 0) FROM log_entries WHERE actor = $1 AND kind = $2";

pub const LOOKUP: &str = "SELECT seq FROM log_entries WHERE actor = $1 AND kind = $2 AND id = $3";
