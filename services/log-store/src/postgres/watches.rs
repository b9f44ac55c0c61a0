//! Which streams need their appends announced to the other replicas: those a subscriber is
//! waiting on somewhere. Each replica keeps rows for the streams its subscribers watch
//! (renewed every [`REFRESH`], lapsing after [`LAPSE`]) and reads the others' rows just as
//! often; the writer then NOTIFYs only for a stream some other replica watches. Announcing
//! every append cost about a tenth of the engine's throughput, and almost none has a
//! waiting reader elsewhere (the kernel tails its journal; inboxes and outboxes are read on
//! demand).
//!
//! A watch is a hint, like the notification itself: until the other replicas have read a
//! new watch (within [`REFRESH`]) their appends to the stream go unannounced and the
//! subscriber finds them by polling. When the watches cannot be read, or are too many to
//! hold, every append is announced.

use super::schema;
use crate::stream::{Kind, StreamId};
use fedsx_pg::Database;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::task::AbortOnDropHandle;

/// How often a replica renews its watches and reads the others'.
const REFRESH: Duration = Duration::from_secs(1);
/// How long a watch row outlives its last renewal.
const LAPSE: Duration = Duration::from_secs(10);
/// Watches of other replicas held at most; past it, every append is announced.
const MAX_WATCHED: usize = 10_000;

/// The streams the other replicas watch.
#[derive(Debug)]
enum Elsewhere {
    /// Not known (not read yet, or the database did not answer) or too many: all of them.
    All,
    Streams(HashSet<StreamId>),
}

pub(super) struct Watches {
    state: Arc<State>,
    _task: AbortOnDropHandle<()>,
}

struct State {
    replica: String,
    /// This replica's watched streams, with how many subscribers wait on each.
    local: Mutex<HashMap<StreamId, usize>>,
    elsewhere: RwLock<Elsewhere>,
    /// A new local watch: renew now rather than at the next tick.
    changed: Notify,
}

/// One subscriber's watch of a stream; dropping it ends the watch.
pub struct Watch {
    state: Arc<State>,
    stream: StreamId,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut local = self.state.local.lock().expect("watches lock poisoned");
        if let Some(count) = local.get_mut(&self.stream) {
            *count -= 1;
            if *count == 0 {
                local.remove(&self.stream);
            }
        }
    }
}

impl Watches {
    pub(super) fn start(database: Arc<Database>) -> Watches {
        let state = Arc::new(State {
            replica: fedsx_pg::replica_name(),
            local: Mutex::new(HashMap::new()),
            elsewhere: RwLock::new(Elsewhere::All),
            changed: Notify::new(),
        });
        let task = AbortOnDropHandle::new(tokio::spawn(refresh(database, state.clone())));
        Watches { state, _task: task }
    }

    /// Starts watching `stream` for a subscriber here.
    pub(super) fn watch(&self, stream: &StreamId) -> Watch {
        let new = {
            let mut local = self.state.local.lock().expect("watches lock poisoned");
            let count = local.entry(stream.clone()).or_default();
            *count += 1;
            *count == 1
        };
        if new {
            self.state.changed.notify_one();
        }
        Watch {
            state: self.state.clone(),
            stream: stream.clone(),
        }
    }

    /// Whether an append to `stream` should be announced to the other replicas.
    pub(super) fn watched_elsewhere(&self, stream: &StreamId) -> bool {
        match &*self.state.elsewhere.read().expect("watches lock poisoned") {
            Elsewhere::All => true,
            Elsewhere::Streams(streams) => streams.contains(stream),
        }
    }
}

async fn refresh(database: Arc<Database>, state: Arc<State>) {
    loop {
        let elsewhere = match renew_and_read(&database, &state).await {
            Ok(elsewhere) => elsewhere,
            Err(err) => {
                tracing::debug!(error = %err, "reading watched streams failed; announcing every append");
                Elsewhere::All
            }
        };
        *state.elsewhere.write().expect("watches lock poisoned") = elsewhere;
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = state.changed.notified() => {}
        }
    }
}

/// Renews this replica's watches, forgets lapsed ones, and reads the other replicas'.
async fn renew_and_read(database: &Database, state: &State) -> Result<Elsewhere, fedsx_pg::PgError> {
    let (actors, kinds): (Vec<String>, Vec<i16>) = state
        .local
        .lock()
        .expect("watches lock poisoned")
        .keys()
        .map(|stream| (stream.actor().to_owned(), i16::from(stream.kind().tag())))
        .unzip();
    let client = database.client().await?;
    let now = i64::try_from(fedsx_runtime::clock::now_ms()).unwrap_or(i64::MAX);
    if !actors.is_empty() {
        let until = now + LAPSE.as_millis() as i64;
        let statement = client.prepare_cached(schema::WATCH).await?;
        client
            .execute(&statement, &[&actors, &kinds, &state.replica, &until])
            .await?;
    }
    client
        .execute(schema::UNWATCHED, &[&(now - LAPSE.as_millis() as i64)])
        .await?;
    let statement = client.prepare_cached(schema::WATCHED).await?;
    let rows = client
        .query(&statement, &[&state.replica, &now, &(MAX_WATCHED as i64 + 1)])
        .await?;
    if rows.len() > MAX_WATCHED {
        return Ok(Elsewhere::All);
    }
    // A row naming no stream this build knows cannot match an append: left out.
    Ok(Elsewhere::Streams(
        rows.iter()
            .filter_map(|row| {
                let kind = Kind::from_tag(u8::try_from(row.get::<_, i16>(1)).ok()?)?;
                StreamId::new(row.get::<_, String>(0), kind).ok()
            })
            .collect(),
    ))
}
