//! The `redis` status store: one compact record per task, shared by every
//! gateway replica, written by the one indexer (the gateway's). Here, in
//! the library, so tests and tools read a store as the gateway does.
//!
//! Keys, under the store's prefix (`{ns}:status:` by default):
//!
//! - `task:{id}`: the task's [`TaskRecord`] as compact JSON (short field
//!   names, times in nanoseconds, at most `status.max_events_per_task`
//!   events, the result only in the status), with a TTL of
//!   `events.retention` from its last update.
//! - `state:{state}` and `type:{type}`: sorted sets of task ids scored by
//!   [`TaskRecord::position`] (last update), for listings; each trimmed to
//!   `status.max_index_tasks` and to the retention.
//! - `types`: the task types seen (to trim their indexes).
//! - `offset`: the last stream offset applied. Written in the same Lua
//!   script as the records, and the script first checks it still holds
//!   what this indexer wrote last: an indexer that lost its lock without
//!   noticing cannot overwrite its successor's work.
//!
//! A single Redis (or a primary with replicas); not Redis Cluster, since
//! the script touches keys it computes.

use std::collections::HashMap;
use std::time::Duration;

use super::{
    ListQuery, Page, StreamedEvent, TaskEvent, TaskRecord, TaskState, TaskStatus, position_since,
};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StatusStoreError {
    /// Redis failed or is unreachable.
    #[error("the status store (redis) failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Another indexer took over; this one must stop writing.
    #[error("another indexer has written the status store since this one last did")]
    Fenced,
}

/// Applies a batch: checks the committed offset, writes the records and
/// their index entries, trims the indexes, commits the new offset.
///
/// ARGV: prefix, expected offset (`""` if none), new offset, TTL in ms,
/// index bound, the lowest score kept, then per task: id, record, old
/// state (`""` if new), new state, type, score.
const APPLY: &str = r"
local p = ARGV[1]
local committed = redis.call('GET', p .. 'offset')
if (committed or '') ~= ARGV[2] then return 0 end
local ttl = ARGV[4]
local cap = tonumber(ARGV[5])
local floor = '(' .. ARGV[6]
local types = {}
for i = 7, #ARGV, 6 do
  local id, old, new, ty, score = ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  redis.call('SET', p .. 'task:' .. id, ARGV[i + 1], 'PX', ttl)
  if old ~= '' and old ~= new then redis.call('ZREM', p .. 'state:' .. old, id) end
  redis.call('ZADD', p .. 'state:' .. new, score, id)
  redis.call('ZADD', p .. 'type:' .. ty, score, id)
  types[ty] = true
end
local function trim(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', floor)
  redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
end
for _, s in ipairs({STATES}) do
  trim(p .. 'state:' .. s)
end
for ty, _ in pairs(types) do
  redis.call('SADD', p .. 'types', ty)
  trim(p .. 'type:' .. ty)
end
redis.call('SET', p .. 'offset', ARGV[3])
return 1
";

/// Removes index entries older than the retention (ARGV: prefix, the
/// lowest score kept).
const TRIM: &str = r"
local p = ARGV[1]
local floor = '(' .. ARGV[2]
for _, s in ipairs({STATES}) do
  redis.call('ZREMRANGEBYSCORE', p .. 'state:' .. s, '-inf', floor)
end
for _, ty in ipairs(redis.call('SMEMBERS', p .. 'types')) do
  redis.call('ZREMRANGEBYSCORE', p .. 'type:' .. ty, '-inf', floor)
end
return 1
";

/// A script with `{STATES}` replaced by a Lua table of every task state.
fn with_states(script: &str) -> String {
    let states: Vec<String> = TaskState::ALL
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    script.replace("{STATES}", &format!("{{{}}}", states.join(", ")))
}

static APPLY_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| with_states(APPLY));
static TRIM_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| with_states(TRIM));

/// How the store keeps records.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Key prefix, e.g. `warren:status:`.
    pub prefix: String,
    /// Records live this long after their last update.
    pub retention: Duration,
    /// Each index keeps at most this many tasks.
    pub max_index_tasks: usize,
    /// Events kept per task.
    pub max_events_per_task: usize,
    /// Results larger than this (as JSON) are kept by reference.
    pub max_result_bytes: usize,
}

/// The shared store.
#[derive(Clone)]
pub struct RedisStatusStore {
    connection: ConnectionManager,
    options: RedisOptions,
}

impl RedisStatusStore {
    /// A store on `url`, connected at its first use (and re-connected on
    /// its own after a loss): a gateway starts before Redis answers, and is
    /// ready once it does.
    pub fn new(url: &str, options: RedisOptions) -> Result<Self, StatusStoreError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            options,
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.options.prefix)
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StatusStoreError> {
        let mut c = self.connection.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// The last stream offset the indexer applied.
    pub async fn committed_offset(&self) -> Result<Option<u64>, StatusStoreError> {
        let mut c = self.connection.clone();
        let offset: Option<u64> = redis::cmd("GET")
            .arg(self.key("offset"))
            .query_async(&mut c)
            .await?;
        Ok(offset)
    }

    /// The task's record.
    pub async fn record(&self, task_id: &str) -> Result<Option<TaskRecord>, StatusStoreError> {
        let mut c = self.connection.clone();
        let raw: Option<String> = redis::cmd("GET")
            .arg(self.key(&format!("task:{task_id}")))
            .query_async(&mut c)
            .await?;
        Ok(raw.and_then(|raw| decode(task_id, &raw)))
    }

    async fn records(&self, ids: &[String]) -> Result<Vec<Option<TaskRecord>>, StatusStoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.connection.clone();
        let mut cmd = redis::cmd("MGET");
        for id in ids {
            cmd.arg(self.key(&format!("task:{id}")));
        }
        let raw: Vec<Option<String>> = cmd.query_async(&mut c).await?;
        Ok(ids
            .iter()
            .zip(raw)
            .map(|(id, raw)| raw.and_then(|raw| decode(id, &raw)))
            .collect())
    }

    /// Applies events read from the stream after offset `committed` (the
    /// offset this indexer last committed, `None` at the very start), and
    /// commits the last one's offset. Events at or before a task's last
    /// applied offset change nothing, so applying a batch twice is
    /// harmless. Returns the new committed offset.
    pub async fn apply(
        &self,
        committed: Option<u64>,
        batch: Vec<StreamedEvent>,
    ) -> Result<Option<u64>, StatusStoreError> {
        let Some(last) = batch.iter().map(|e| e.offset).max() else {
            return Ok(committed);
        };
        let mut ids: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for e in &batch {
            if !index.contains_key(&e.event.task_id) {
                index.insert(e.event.task_id.clone(), ids.len());
                ids.push(e.event.task_id.clone());
            }
        }
        let mut records = self.records(&ids).await?;
        let old_states: Vec<Option<TaskState>> = records
            .iter()
            .map(|r| r.as_ref().map(|r| r.status.state))
            .collect();
        let max_events = self.options.max_events_per_task.max(1);
        for streamed in batch {
            let slot = &mut records[index[&streamed.event.task_id]];
            match slot {
                Some(record) if streamed.offset <= record.last_offset => {}
                Some(record) => {
                    record.apply(streamed, max_events);
                }
                None => *slot = Some(TaskRecord::first(streamed)),
            }
        }
        let retention_ms = self.options.retention.as_millis().max(1);
        let floor =
            position_since(Utc::now() - chrono::Duration::milliseconds(retention_ms as i64));
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(APPLY_SCRIPT.as_str())
            .arg(0)
            .arg(&self.options.prefix)
            .arg(committed.map(|o| o.to_string()).unwrap_or_default())
            .arg(last)
            .arg(retention_ms as u64)
            .arg(self.options.max_index_tasks.max(1))
            .arg(floor);
        for ((id, record), old) in ids.iter().zip(&records).zip(old_states) {
            let Some(record) = record else { continue };
            cmd.arg(id)
                .arg(encode(record, self.options.max_result_bytes))
                .arg(old.map(TaskState::as_str).unwrap_or_default())
                .arg(record.status.state.as_str())
                .arg(&record.status.task_type)
                .arg(record.position());
        }
        let mut c = self.connection.clone();
        let applied: i64 = cmd.query_async(&mut c).await?;
        if applied == 1 {
            Ok(Some(last))
        } else {
            Err(StatusStoreError::Fenced)
        }
    }

    /// Removes index entries of tasks last updated before the retention
    /// (their records have expired).
    pub async fn trim(&self) -> Result<(), StatusStoreError> {
        let retention_ms = self.options.retention.as_millis().max(1) as i64;
        let floor = position_since(Utc::now() - chrono::Duration::milliseconds(retention_ms));
        let mut c = self.connection.clone();
        let _: i64 = redis::cmd("EVAL")
            .arg(TRIM_SCRIPT.as_str())
            .arg(0)
            .arg(&self.options.prefix)
            .arg(floor)
            .query_async(&mut c)
            .await?;
        Ok(())
    }

    /// One page of the tasks `query` asks for, newest first. A state (or
    /// no filter: every state's index merged) or a type index is read
    /// in chunks; records that have expired, or that another filter
    /// excludes, are skipped. At most `max_scan` index entries are read
    /// for one page: the page may then hold fewer than `limit` tasks, with
    /// a cursor to go on.
    pub async fn list(&self, query: &ListQuery, max_scan: usize) -> Result<Page, StatusStoreError> {
        let keys: Vec<String> = match (query.state, &query.task_type) {
            (Some(state), _) => vec![self.key(&format!("state:{}", state.as_str()))],
            (None, Some(ty)) => vec![self.key(&format!("type:{ty}"))],
            (None, None) => TaskState::ALL
                .iter()
                .map(|s| self.key(&format!("state:{}", s.as_str())))
                .collect(),
        };
        let min = query.since.map(position_since).unwrap_or(0);
        let mut before = query.before;
        let mut tasks = Vec::new();
        let mut scanned = 0;
        let chunk = (query.limit + 1).clamp(16, 1000);
        loop {
            // The next chunk of ids, newest first, over all the keys.
            let mut entries: Vec<(u64, String)> = Vec::new();
            let mut c = self.connection.clone();
            for key in &keys {
                let max = before
                    .map(|b| format!("({b}"))
                    .unwrap_or_else(|| "+inf".into());
                let found: Vec<(String, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                    .arg(key)
                    .arg(max)
                    .arg(min)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(chunk)
                    .query_async(&mut c)
                    .await?;
                entries.extend(found.into_iter().map(|(id, score)| (score as u64, id)));
            }
            entries.sort_unstable_by_key(|(p, _)| std::cmp::Reverse(*p));
            // Merged from several keys, only the first `chunk` are surely
            // the newest of all.
            let exhausted = entries.len() < chunk;
            entries.truncate(chunk);
            let ids: Vec<String> = entries.iter().map(|(_, id)| id.clone()).collect();
            let records = self.records(&ids).await?;
            for ((position, _), record) in entries.iter().zip(records) {
                scanned += 1;
                before = Some(*position);
                if let Some(record) = record
                    && query.matches(&record)
                {
                    tasks.push(record.status);
                    if tasks.len() == query.limit {
                        // More may follow, unless this was the very last.
                        let last = exhausted && scanned == entries.len();
                        return Ok(Page {
                            tasks,
                            next: if last { None } else { before },
                        });
                    }
                }
            }
            if exhausted {
                return Ok(Page { tasks, next: None });
            }
            if scanned >= max_scan {
                return Ok(Page {
                    tasks,
                    next: before,
                });
            }
        }
    }

    /// Redis's `MEMORY USAGE` of the task's record and of its index
    /// entries' share, in bytes (for the benchmark and the docs).
    pub async fn memory_usage(&self, task_id: &str) -> Result<Option<u64>, StatusStoreError> {
        let mut c = self.connection.clone();
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(self.key(&format!("task:{task_id}")))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut c)
            .await?;
        Ok(bytes)
    }

    /// Deletes every key under the prefix (tests, and resetting a store
    /// after its stream was deleted).
    pub async fn delete_all(&self) -> Result<u64, StatusStoreError> {
        let mut c = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", escape_glob(&self.options.prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A record as stored: short names, times as nanoseconds, the result in
/// the status only (a `succeeded` event gets it back when read).
#[derive(Serialize, Deserialize)]
struct Compact {
    y: String,
    s: TaskState,
    a: u32,
    o: u64,
    u: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Value>,
    /// Progress (`g`) and its message (`m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    h: Vec<CompactEvent>,
}

#[derive(Serialize, Deserialize)]
struct CompactEvent {
    o: u64,
    s: TaskState,
    t: i64,
    a: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    b: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<String>,
}

fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(i64::MAX)
}

fn time(nanos: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(nanos)
}

/// The result kept in place of one larger than `max_result_bytes`: where
/// the whole one is (the `succeeded` event at this stream offset) and its
/// size. The gateway reads it from the stream when asked.
pub const RESULT_REF: &str = "$warren_result_ref";

/// The stream offset a by-reference result points at.
pub fn result_ref(result: &Value) -> Option<u64> {
    result.get(RESULT_REF)?.get("offset")?.as_u64()
}

fn encode(record: &TaskRecord, max_result_bytes: usize) -> String {
    let s = &record.status;
    let result = s.result.as_ref().map(|v| {
        let size = serde_json::to_string(v).map(|j| j.len()).unwrap_or(0);
        if size <= max_result_bytes || result_ref(v).is_some() {
            v.clone()
        } else {
            let offset = record
                .events
                .iter()
                .rev()
                .find(|e| e.event.state == TaskState::Succeeded)
                .map(|e| e.offset)
                .unwrap_or(record.last_offset);
            serde_json::json!({RESULT_REF: {"offset": offset, "bytes": size}})
        }
    });
    let compact = Compact {
        y: s.task_type.clone(),
        s: s.state,
        a: s.attempt,
        o: record.last_offset,
        u: nanos(s.updated_at),
        q: s.queued_at.map(nanos),
        b: s.started_at.map(nanos),
        f: s.finished_at.map(nanos),
        n: s.next_attempt_at.map(nanos),
        d: s.due_at.map(nanos),
        k: s.error_kind.clone(),
        e: s.error.clone(),
        r: s.reason.clone(),
        v: result,
        g: s.progress,
        m: s.progress_message.clone(),
        h: record
            .events
            .iter()
            .map(|e| CompactEvent {
                o: e.offset,
                s: e.event.state,
                t: nanos(e.event.at),
                a: e.event.attempt,
                b: e.event.by.clone(),
                k: e.event.error_kind.clone(),
                e: e.event.error.clone(),
                n: e.event.next_attempt_at.map(nanos),
                d: e.event.due_at.map(nanos),
                r: e.event.reason.clone(),
                g: e.event.progress,
                m: e.event.message.clone(),
            })
            .collect(),
    };
    serde_json::to_string(&compact).unwrap_or_default()
}

fn decode(task_id: &str, raw: &str) -> Option<TaskRecord> {
    let c: Compact = match serde_json::from_str(raw) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, task_id, "Skipped an unreadable status record.");
            return None;
        }
    };
    let status = TaskStatus {
        task_id: task_id.to_owned(),
        task_type: c.y.clone(),
        state: c.s,
        attempt: c.a,
        queued_at: c.q.map(time),
        started_at: c.b.map(time),
        updated_at: time(c.u),
        finished_at: c.f.map(time),
        next_attempt_at: c.n.map(time),
        due_at: c.d.map(time),
        error_kind: c.k,
        error: c.e,
        reason: c.r,
        result: c.v,
        progress: c.g,
        progress_message: c.m,
    };
    let events =
        c.h.into_iter()
            .map(|h| StreamedEvent {
                offset: h.o,
                event: TaskEvent {
                    task_id: task_id.to_owned(),
                    task_type: c.y.clone(),
                    state: h.s,
                    at: time(h.t),
                    attempt: h.a,
                    by: h.b,
                    error_kind: h.k,
                    error: h.e,
                    next_attempt_at: h.n.map(time),
                    due_at: h.d.map(time),
                    reason: h.r,
                    progress: h.g,
                    message: h.m,
                    result: if h.s == TaskState::Succeeded {
                        status.result.clone()
                    } else {
                        None
                    },
                },
            })
            .collect();
    Some(TaskRecord {
        status,
        events,
        last_offset: c.o,
    })
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_compact_form_and_a_large_result_becomes_a_reference() {
        let mut queued = TaskEvent::new("t1", "email.send", TaskState::Queued, 1);
        queued.by = Some("gateway@h/1".into());
        let mut record = TaskRecord::first(StreamedEvent {
            offset: 7,
            event: queued,
        });
        let mut done = TaskEvent::new("t1", "email.send", TaskState::Succeeded, 1);
        done.result = Some(serde_json::json!({"message_id": "<a@b>"}));
        record.apply(
            StreamedEvent {
                offset: 9,
                event: done,
            },
            16,
        );
        let back = decode("t1", &encode(&record, 1024)).unwrap();
        assert_eq!(back.status, record.status);
        assert_eq!(back.last_offset, 9);
        assert_eq!(
            back.events.iter().map(|e| &e.event).collect::<Vec<_>>(),
            record.events.iter().map(|e| &e.event).collect::<Vec<_>>()
        );
        let small = decode("t1", &encode(&record, 4)).unwrap();
        assert_eq!(result_ref(small.status.result.as_ref().unwrap()), Some(9));
    }

    fn store(retention: Duration) -> RedisStatusStore {
        let prefix = format!("test:{}:status:", uuid::Uuid::new_v4().simple());
        RedisStatusStore::new(
            "redis://127.0.0.1:6379/0",
            RedisOptions {
                prefix,
                retention,
                max_index_tasks: 100,
                max_events_per_task: 16,
                max_result_bytes: 1024,
            },
        )
        .unwrap()
    }

    fn ev(offset: u64, id: &str, ty: &str, state: TaskState, ms: i64) -> StreamedEvent {
        let mut event = TaskEvent::new(id, ty, state, 1);
        static BASE: std::sync::LazyLock<DateTime<Utc>> = std::sync::LazyLock::new(Utc::now);
        event.at = *BASE + chrono::Duration::milliseconds(ms);
        StreamedEvent { offset, event }
    }

    #[tokio::test]
    async fn batches_apply_once_in_order_and_a_stale_indexer_is_fenced() {
        let store = store(Duration::from_secs(3600));
        let batch = vec![
            ev(1, "a", "email.send", TaskState::Queued, 0),
            ev(2, "a", "email.send", TaskState::Running, 1),
            ev(3, "b", "email.send", TaskState::Queued, 2),
        ];
        let committed = store.apply(None, batch.clone()).await.unwrap();
        assert_eq!(committed, Some(3));
        assert_eq!(store.committed_offset().await.unwrap(), Some(3));
        // The same batch again, by an indexer that believes nothing was
        // committed: refused, nothing changes.
        assert!(matches!(
            store.apply(None, batch).await,
            Err(StatusStoreError::Fenced)
        ));
        // A late `queued` after `succeeded` is history only, as in memory.
        let committed = store
            .apply(
                committed,
                vec![
                    ev(4, "b", "email.send", TaskState::Running, 3),
                    ev(5, "b", "email.send", TaskState::Succeeded, 4),
                    ev(6, "a", "email.send", TaskState::Queued, 0),
                ],
            )
            .await
            .unwrap();
        assert_eq!(committed, Some(6));
        let a = store.record("a").await.unwrap().unwrap();
        assert_eq!(a.status.state, TaskState::Running);
        assert_eq!(a.events.len(), 3);
        let b = store.record("b").await.unwrap().unwrap();
        assert_eq!(b.status.state, TaskState::Succeeded);
        assert_eq!(
            b.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        // Listing by state and type, newest first, pages.
        let page = store
            .list(
                &ListQuery {
                    limit: 1,
                    ..Default::default()
                },
                1000,
            )
            .await
            .unwrap();
        assert_eq!(page.tasks[0].task_id, "b");
        let rest = store
            .list(
                &ListQuery {
                    limit: 1,
                    before: page.next,
                    ..Default::default()
                },
                1000,
            )
            .await
            .unwrap();
        assert_eq!(rest.tasks[0].task_id, "a");
        assert_eq!(rest.next, None);
        let running = store
            .list(
                &ListQuery {
                    state: Some(TaskState::Running),
                    task_type: Some("email.send".into()),
                    limit: 10,
                    ..Default::default()
                },
                1000,
            )
            .await
            .unwrap();
        assert_eq!(running.tasks.len(), 1);
        assert_eq!(running.tasks[0].task_id, "a");
        let bytes = store.memory_usage("b").await.unwrap().unwrap();
        assert!(bytes < 1024, "{bytes} bytes");
        store.delete_all().await.unwrap();
        assert_eq!(store.committed_offset().await.unwrap(), None);
    }
}
