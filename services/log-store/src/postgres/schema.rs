//! The log-store's tables and statements. Every key leads with the stream (actor, kind),
//! and no statement touches two streams, so the tables can be distributed by actor (Citus,
//! YugabyteDB) when one primary is no longer enough.

use fedsx_pg::Migration;

/// The component name under which the log-store's schema version is recorded.
pub const COMPONENT: &str = "log-store";

pub const MIGRATIONS: &[Migration] = &[Migration {
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
}];

/// Where committed appends are announced; the payload is `<kind tag>:<actor>`.
pub const CHANNEL: &str = "fedsx_log_appended";

/// Locks the stream's row for this transaction (serialising writers of one stream across
/// every log-store replica) and reads its tip.
pub const LOCK_TIP: &str = "SELECT tip FROM log_streams WHERE actor = $1 AND kind = $2 FOR UPDATE";

pub const CREATE_STREAM: &str =
    "INSERT INTO log_streams (actor, kind, tip) VALUES ($1, $2, 0) ON CONFLICT (actor, kind) DO NOTHING";

pub const STORED_IDS: &str = "SELECT id, seq FROM log_entries WHERE actor = $1 AND kind = $2 AND id = ANY($3)";

/// Inserts the group's entries and moves the tip, in one statement. (No NOTIFY here: see
/// `fedsx_pg::Notifier`.)
pub const WRITE_GROUP: &str = "
    WITH inserted AS (
        INSERT INTO log_entries (actor, kind, seq, id, data)
        SELECT $1, $2, seq, id, data FROM unnest($3::bigint[], $4::bytea[], $5::bytea[]) AS t(seq, id, data)
    )
    UPDATE log_streams SET tip = $6 WHERE actor = $1 AND kind = $2";

/// The tip and a page after `$3`: at most `$4` entries, ending before the entry that
/// would take the page's data past `$5` bytes (the first entry always included). One
/// statement, so tip and entries come from one snapshot.
pub const READ_PAGE: &str = r#"
    SELECT s.tip, p.seq, p.id, p.data
    FROM log_streams s
    LEFT JOIN LATERAL (
        SELECT seq, id, data FROM (
            SELECT seq, id, data, sum(octet_length(data)) OVER w AS upto, row_number() OVER w AS n
            FROM (
                SELECT seq, id, data FROM log_entries
                WHERE actor = s.actor AND kind = s.kind AND seq > $3
                ORDER BY seq LIMIT $4
            ) AS limited
            WINDOW w AS (ORDER BY seq)
        ) AS sized
        WHERE upto <= $5 OR n = 1
    ) AS p ON true
    WHERE s.actor = $1 AND s.kind = $2
    ORDER BY p.seq"#;

pub const TIP: &str = "SELECT tip FROM log_streams WHERE actor = $1 AND kind = $2";

pub const LOOKUP: &str = "SELECT seq FROM log_entries WHERE actor = $1 AND kind = $2 AND id = $3";
