//! A conflict-faithful DynamoDB proxy for the local stack.
//!
//! MiniStack (the local emulator) runs every DynamoDB transaction to completion one at a time and
//! never refuses one because another is touching the same item. Real DynamoDB does: a write that
//! meets an item of an *ongoing* `TransactWriteItems` is refused
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html>,
//! "Transaction conflict handling"):
//!
//! - an item of a `TransactWriteItems` that is part of another ongoing `TransactWriteItems`: the
//!   whole later transaction fails with `TransactionCanceledException`, its
//!   `CancellationReasons` saying `TransactionConflict` for that item and `None` for the others;
//! - a `PutItem`, `UpdateItem` or `DeleteItem` on an item of an ongoing transaction:
//!   `TransactionConflictException`. A `BatchWriteItem` with any such item is refused whole the
//!   same way; DynamoDB does not document that case and the SDK's model lists no
//!   `TransactionConflictException` for `BatchWriteItem` (it surfaces as an unmodelled error
//!   with that code). The project does not use `BatchWriteItem`.
//!
//! This proxy sits between every AWS client and the emulator, forwards every request unchanged
//! (method, path, query, headers including `Host` and the SigV4 `Authorization`, body) and applies
//! that rule to the DynamoDB requests (`X-Amz-Target: DynamoDB_20120810.<Op>`). Reads
//! (`GetItem`, `Query`, `Scan`, `BatchGetItem`, `TransactGetItems`) and every other service
//! (SQS, SSM, S3, Lambda, CloudFormation, ...) pass through untouched.
//!
//! **In flight.** A transaction holds its items from the moment the proxy receives it until the
//! emulator has answered it, and the proxy waits `hold` *before* forwarding it: the emulator
//! answers a transaction in about a millisecond where DynamoDB takes about 10 to 30 ms (two-phase
//! commit across partitions), so without the wait the window in which real clients collide
//! would be a thousand times narrower than on AWS and the layer would almost never bite. Waiting
//! before forwarding (rather than after) is DynamoDB's order too: the items are locked during the
//! prepare phase and the writes become visible at commit, at the end. The default, 10 ms, is the
//! low end of DynamoDB's transaction latency: conflicts seen here are conflicts AWS would show
//! at least as often. Single-item writes are not held (they take a few milliseconds on AWS and
//! DynamoDB does not refuse a transaction because of one).
//!
//! **Keys.** An item is identified by its table name and its key attributes. `Update`, `Delete`
//! and `ConditionCheck` name their `Key`; for a `Put` (whose `Item` holds every attribute) the
//! proxy learns the table's key schema once with `DescribeTable` against the emulator and caches
//! it (forgotten when the table is deleted or created again); if that fails it falls back to the
//! `pk`/`sk` attributes present. Numbers are compared as written (`"1"` and `"1.0"` differ).
//!
//! Not modelled: `TransactGetItems` refused because of an ongoing write, PartiQL
//! (`ExecuteStatement`, `ExecuteTransaction`), and a transaction refused because of an ongoing
//! single-item write; all of those pass through.
//!
//! Counters of what was refused are served on `GET /_conflicts/stats` (JSON) and kept in
//! [`StatsHandle`]. [`start`] runs the proxy inside a process (tests); the `conflict-proxy`
//! binary runs it for the local stack (`scripts/up.sh`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Response, StatusCode, Uri,
    body::{Bytes, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// The `X-Amz-Target` prefix of DynamoDB's JSON 1.0 protocol.
pub const DYNAMODB_TARGET_PREFIX: &str = "DynamoDB_20120810.";
/// Where the proxy answers with its counters instead of forwarding.
pub const STATS_PATH: &str = "/_conflicts/stats";
/// `POST /_conflicts/enforce?on=0` makes the proxy a plain pass-through (no refusal, no hold),
/// `on=1` applies the rule again: a benchmark compares both without redeploying.
pub const ENFORCE_PATH: &str = "/_conflicts/enforce";
/// DynamoDB's message for an item of an ongoing transaction.
pub const ONGOING: &str = "Transaction is ongoing for the item";
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";

// ---------------------------------------------------------------------------------------------
// The rule, without any I/O.
// ---------------------------------------------------------------------------------------------

/// One item: its table and its key attributes, as canonical JSON (`{"pk":{"S":"..."},...}` with
/// the names sorted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub table: String,
    pub key: String,
}

impl ItemKey {
    /// The item of `table` whose key attributes are `key` (an `AttributeValue` map in DynamoDB
    /// JSON).
    pub fn new(table: &str, key: &Map<String, Value>) -> Self {
        let sorted: BTreeMap<&String, &Value> = key.iter().collect();
        Self {
            table: table.to_owned(),
            key: serde_json::to_string(&sorted).unwrap_or_default(),
        }
    }

    /// The item a whole `Item` (a `Put`) writes, given the names of the table's key attributes;
    /// `None` when one of them is missing (the emulator refuses such a request anyway).
    pub fn of_item(table: &str, item: &Map<String, Value>, key_names: &[String]) -> Option<Self> {
        let mut key = Map::new();
        for name in key_names {
            key.insert(name.clone(), item.get(name)?.clone());
        }
        (!key.is_empty()).then(|| Self::new(table, &key))
    }
}

/// The DynamoDB writes the rule is about; everything else passes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    TransactWriteItems,
    PutItem,
    UpdateItem,
    DeleteItem,
    BatchWriteItem,
}

impl WriteOp {
    /// The operation of an `X-Amz-Target` header value, if it is one of the writes.
    pub fn of_target(target: &str) -> Option<Self> {
        Some(match target.strip_prefix(DYNAMODB_TARGET_PREFIX)? {
            "TransactWriteItems" => Self::TransactWriteItems,
            "PutItem" => Self::PutItem,
            "UpdateItem" => Self::UpdateItem,
            "DeleteItem" => Self::DeleteItem,
            "BatchWriteItem" => Self::BatchWriteItem,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::TransactWriteItems => "TransactWriteItems",
            Self::PutItem => "PutItem",
            Self::UpdateItem => "UpdateItem",
            Self::DeleteItem => "DeleteItem",
            Self::BatchWriteItem => "BatchWriteItem",
        }
    }
}

/// One write of a request: its table and either its `Key` or its whole `Item` (a put).
#[derive(Debug, Clone, PartialEq)]
pub enum Target<'a> {
    Key(&'a str, &'a Map<String, Value>),
    Item(&'a str, &'a Map<String, Value>),
    /// A write whose table or key could not be read (left to the emulator to refuse).
    Unknown,
}

impl Target<'_> {
    /// The item written, with `schema` giving a table's key attribute names for puts.
    pub fn item(&self, schema: &dyn Fn(&str) -> Option<Vec<String>>) -> Option<ItemKey> {
        match *self {
            Target::Key(table, key) => Some(ItemKey::new(table, key)),
            Target::Item(table, item) => ItemKey::of_item(table, item, &schema(table)?),
            Target::Unknown => None,
        }
    }
}

fn object<'a>(v: &'a Value, k: &str) -> Option<&'a Map<String, Value>> {
    v.get(k)?.as_object()
}

fn string<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k)?.as_str()
}

fn single<'a>(op: &'a Value, item_field: &str) -> Target<'a> {
    let Some(table) = string(op, "TableName") else {
        return Target::Unknown;
    };
    match (item_field, object(op, item_field)) {
        ("Item", Some(item)) => Target::Item(table, item),
        (_, Some(key)) => Target::Key(table, key),
        (_, None) => Target::Unknown,
    }
}

/// The writes of a request body, in order: one per transaction item, one for a single write,
/// one per `PutRequest`/`DeleteRequest` of a batch.
pub fn targets(op: WriteOp, body: &Value) -> Vec<Target<'_>> {
    match op {
        WriteOp::PutItem => vec![single(body, "Item")],
        WriteOp::UpdateItem | WriteOp::DeleteItem => vec![single(body, "Key")],
        WriteOp::TransactWriteItems => body
            .get("TransactItems")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|entry| {
                        if let Some(put) = entry.get("Put") {
                            single(put, "Item")
                        } else if let Some(op) = ["Update", "Delete", "ConditionCheck"]
                            .iter()
                            .find_map(|k| entry.get(*k))
                        {
                            single(op, "Key")
                        } else {
                            Target::Unknown
                        }
                    })
                    .collect()
            })
            .unwrap_or_default(),
        WriteOp::BatchWriteItem => object(body, "RequestItems")
            .map(|tables| {
                tables
                    .iter()
                    .flat_map(|(table, requests)| {
                        requests.as_array().into_iter().flatten().map(move |r| {
                            if let Some(item) = r.get("PutRequest").and_then(|p| object(p, "Item"))
                            {
                                Target::Item(table, item)
                            } else if let Some(key) =
                                r.get("DeleteRequest").and_then(|d| object(d, "Key"))
                            {
                                Target::Key(table, key)
                            } else {
                                Target::Unknown
                            }
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The tables whose key schema is needed to name the items of these writes (those with puts).
pub fn tables_of_puts(targets: &[Target<'_>]) -> Vec<String> {
    let mut tables: Vec<String> = Vec::new();
    for t in targets {
        if let Target::Item(table, _) = t
            && !tables.iter().any(|x| x == table)
        {
            tables.push((*table).to_owned());
        }
    }
    tables
}

/// The key attribute names of `table` as `DescribeTable` gave them; without that answer, those of
/// `pk` and `sk` (the project's key) that the written item has.
fn key_names_or_fallback(
    schemas: &HashMap<String, Vec<String>>,
    table: &str,
    target: &Target<'_>,
) -> Vec<String> {
    if let Some(names) = schemas.get(table) {
        return names.clone();
    }
    let Target::Item(_, item) = target else {
        return Vec::new();
    };
    ["pk", "sk"]
        .into_iter()
        .filter(|n| item.contains_key(*n))
        .map(str::to_owned)
        .collect()
}

/// A transaction admitted by [`LockTable::begin`]; give it back to [`LockTable::finish`].
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
pub struct TxnId(u64);

/// The items of the transactions in flight, and the rule.
#[derive(Debug, Default)]
pub struct LockTable {
    held: HashMap<ItemKey, TxnId>,
    txns: HashMap<TxnId, Vec<ItemKey>>,
    next: u64,
}

impl LockTable {
    /// A new transaction over `items` (in request order; `None`: an item whose key is unknown,
    /// never in conflict). Admitted, it holds every item until [`finish`](Self::finish); refused,
    /// the answer says which items are held by another transaction in flight.
    pub fn begin(&mut self, items: &[Option<ItemKey>]) -> Result<TxnId, Vec<bool>> {
        let conflicts = self.conflicts(items);
        if conflicts.iter().any(|c| *c) {
            return Err(conflicts);
        }
        self.next += 1;
        let id = TxnId(self.next);
        let mut mine: Vec<ItemKey> = Vec::new();
        // The same item twice in one transaction is the emulator's to refuse (ValidationException),
        // not a conflict with itself.
        let unique: HashSet<&ItemKey> = items.iter().flatten().collect();
        for item in unique {
            self.held.insert(item.clone(), id);
            mine.push(item.clone());
        }
        self.txns.insert(id, mine);
        Ok(id)
    }

    /// The transaction has been answered: its items are free.
    pub fn finish(&mut self, id: TxnId) {
        for item in self.txns.remove(&id).unwrap_or_default() {
            if self.held.get(&item) == Some(&id) {
                self.held.remove(&item);
            }
        }
    }

    /// For each item, whether a transaction in flight holds it.
    pub fn conflicts(&self, items: &[Option<ItemKey>]) -> Vec<bool> {
        items
            .iter()
            .map(|i| i.as_ref().is_some_and(|i| self.held.contains_key(i)))
            .collect()
    }

    pub fn transactions_in_flight(&self) -> usize {
        self.txns.len()
    }

    pub fn items_held(&self) -> usize {
        self.held.len()
    }
}

/// The body DynamoDB answers a transaction refused for conflicts with (HTTP 400).
pub fn canceled_body(conflicts: &[bool]) -> Value {
    let codes: Vec<&str> = conflicts
        .iter()
        .map(|c| if *c { "TransactionConflict" } else { "None" })
        .collect();
    let reasons: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            if *c {
                json!({"Code": "TransactionConflict", "Message": ONGOING})
            } else {
                json!({"Code": "None"})
            }
        })
        .collect();
    json!({
        "__type": format!("{ERROR_NAMESPACE}TransactionCanceledException"),
        "CancellationReasons": reasons,
        "Message": format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
            codes.join(", ")
        ),
    })
}

/// The body DynamoDB answers a single write on an item of an ongoing transaction with (HTTP 400).
pub fn conflict_body() -> Value {
    json!({
        "__type": format!("{ERROR_NAMESPACE}TransactionConflictException"),
        "message": ONGOING,
    })
}

// ---------------------------------------------------------------------------------------------
// Counters.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    dynamodb_requests: AtomicU64,
    transactions: AtomicU64,
    transactions_refused: AtomicU64,
    transaction_items_conflicted: AtomicU64,
    writes: AtomicU64,
    writes_refused: AtomicU64,
    refused_put_item: AtomicU64,
    refused_update_item: AtomicU64,
    refused_delete_item: AtomicU64,
    refused_batch_write_item: AtomicU64,
    upstream_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the proxy has seen and refused so far (all counters since start).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub hold_ms: u64,
    /// Whether the conflict rule is applied (see [`ENFORCE_PATH`]).
    #[serde(default)]
    pub enforcing: bool,
    /// Every request received (the stats endpoint excepted).
    pub requests: u64,
    /// Those with a DynamoDB `X-Amz-Target`.
    pub dynamodb_requests: u64,
    /// `TransactWriteItems` received.
    pub transactions: u64,
    /// Of those, refused with `TransactionCanceledException` (`TransactionConflict`).
    pub transactions_refused: u64,
    /// Items marked `TransactionConflict` in those refusals.
    pub transaction_items_conflicted: u64,
    /// `PutItem`, `UpdateItem`, `DeleteItem` and `BatchWriteItem` received.
    pub writes: u64,
    /// Of those, refused with `TransactionConflictException`.
    pub writes_refused: u64,
    pub refused_by_operation: BTreeMap<String, u64>,
    /// Requests the emulator could not be reached for (the client's connection is dropped).
    pub upstream_errors: u64,
    /// Now: transactions between receipt and the emulator's answer, and the items they hold.
    pub transactions_in_flight: u64,
    pub items_held: u64,
}

struct Shared {
    counters: Counters,
    locks: Mutex<LockTable>,
    hold: Duration,
    enforcing: std::sync::atomic::AtomicBool,
}

/// The counters of a running proxy.
#[derive(Clone)]
pub struct StatsHandle(Arc<Shared>);

impl StatsHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (in_flight, held) = {
            let locks = self.0.locks.lock().unwrap_or_else(|e| e.into_inner());
            (locks.transactions_in_flight(), locks.items_held())
        };
        let refused_by_operation = [
            ("TransactWriteItems", get(&c.transactions_refused)),
            ("PutItem", get(&c.refused_put_item)),
            ("UpdateItem", get(&c.refused_update_item)),
            ("DeleteItem", get(&c.refused_delete_item)),
            ("BatchWriteItem", get(&c.refused_batch_write_item)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        StatsSnapshot {
            hold_ms: self.0.hold.as_millis() as u64,
            enforcing: self.0.enforcing.load(Ordering::Relaxed),
            requests: get(&c.requests),
            dynamodb_requests: get(&c.dynamodb_requests),
            transactions: get(&c.transactions),
            transactions_refused: get(&c.transactions_refused),
            transaction_items_conflicted: get(&c.transaction_items_conflicted),
            writes: get(&c.writes),
            writes_refused: get(&c.writes_refused),
            refused_by_operation,
            upstream_errors: get(&c.upstream_errors),
            transactions_in_flight: in_flight as u64,
            items_held: held as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing.
// ---------------------------------------------------------------------------------------------

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The emulator, e.g. `http://127.0.0.1:4566` (plain HTTP).
    pub upstream: String,
    /// How long a transaction waits, holding its items, before it is forwarded.
    pub hold: Duration,
}

/// The default hold: the low end of DynamoDB's transaction latency.
pub const DEFAULT_HOLD: Duration = Duration::from_millis(10);

/// A proxy running in this process; it stops when this is dropped.
pub struct RunningProxy {
    /// `http://127.0.0.1:<port>`: the endpoint to give AWS clients.
    pub url: String,
    pub addr: SocketAddr,
    pub stats: StatsHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Upstream = Client<HttpConnector, Full<Bytes>>;

/// Why a client's connection is dropped without an answer (the emulator could not be reached, or
/// the client's request could not be read).
#[derive(Debug)]
struct Dropped(String);

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Dropped {}

fn dropped(e: impl std::fmt::Display) -> Dropped {
    Dropped(e.to_string())
}

struct Proxy {
    shared: Arc<Shared>,
    upstream: Uri,
    client: Upstream,
    schemas: Mutex<HashMap<String, Vec<String>>>,
}

/// Starts the proxy on `listen` (port 0: any free port) in the current Tokio runtime.
pub async fn start(listen: SocketAddr, config: Config) -> std::io::Result<RunningProxy> {
    let upstream: Uri = config
        .upstream
        .trim_end_matches('/')
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the upstream must be http://host:port",
        ));
    }
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // Idle pooled connections are dropped before the emulator's own keep-alive timeout (5 s)
    // could close one under a request.
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build_http();
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        locks: Mutex::new(LockTable::default()),
        hold: config.hold,
        enforcing: std::sync::atomic::AtomicBool::new(true),
    });
    let proxy = Arc::new(Proxy {
        shared: shared.clone(),
        upstream,
        client,
        schemas: Mutex::new(HashMap::new()),
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { proxy.handle(req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(RunningProxy {
        url: format!("http://{addr}"),
        addr,
        stats: StatsHandle(shared),
        task,
    })
}

/// Starts the proxy on a free port of 127.0.0.1, in front of `upstream` (tests).
pub async fn start_ephemeral(upstream: &str, hold: Duration) -> std::io::Result<RunningProxy> {
    let config = Config {
        upstream: upstream.to_owned(),
        hold,
    };
    start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
}

/// Headers that belong to one connection, not to the request: never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "expect"
    )
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    if let Some(t) = body.get("__type").and_then(Value::as_str)
        && let Ok(v) = HeaderValue::from_str(t)
    {
        h.insert("x-amzn-errortype", v);
    }
    let mut id = [0u8; 16];
    twochan_domain::crypto::fill_random(&mut id);
    if let Ok(v) = HeaderValue::from_str(&hex::encode_upper(id)) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// Frees a transaction's items when it is answered, or when its client goes away.
struct Held<'a> {
    shared: &'a Shared,
    id: TxnId,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(self.id);
    }
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Dropped> {
        if req.method() == Method::GET && req.uri().path() == STATS_PATH {
            let body = serde_json::to_value(StatsHandle(self.shared.clone()).snapshot())
                .map_err(dropped)?;
            let mut resp = json_response(StatusCode::OK, &body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        if req.method() == Method::POST && req.uri().path() == ENFORCE_PATH {
            let on = req.uri().query() != Some("on=0");
            self.shared.enforcing.store(on, Ordering::Relaxed);
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "enforcing": on }),
            ));
        }
        let counters = &self.shared.counters;
        bump(&counters.requests);
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map_err(dropped)?.to_bytes();
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !target.starts_with(DYNAMODB_TARGET_PREFIX) {
            return self.forward(&parts, body).await;
        }
        bump(&counters.dynamodb_requests);
        let target = target.to_owned();
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity");
        let parsed: Option<Value> = if encoded {
            None
        } else {
            serde_json::from_slice(&body).ok()
        };
        if matches!(
            target.strip_prefix(DYNAMODB_TARGET_PREFIX),
            Some("DeleteTable" | "CreateTable")
        ) && let Some(table) = parsed.as_ref().and_then(|b| string(b, "TableName"))
        {
            self.lock_schemas().remove(table);
        }
        let (Some(op), Some(json)) = (WriteOp::of_target(&target), parsed) else {
            return self.forward(&parts, body).await;
        };
        if !self.shared.enforcing.load(Ordering::Relaxed) {
            return self.forward(&parts, body).await;
        }
        let targets = targets(op, &json);
        for table in tables_of_puts(&targets) {
            if !self.lock_schemas().contains_key(&table) {
                let schema = self.describe_key_schema(&parts.headers, &table).await;
                if let Some(schema) = schema {
                    self.lock_schemas().insert(table, schema);
                }
            }
        }
        let items: Vec<Option<ItemKey>> = {
            let schemas = self.lock_schemas();
            targets
                .iter()
                .map(|t| t.item(&|table| Some(key_names_or_fallback(&schemas, table, t))))
                .collect()
        };
        if op == WriteOp::TransactWriteItems {
            bump(&counters.transactions);
            let begun = self
                .shared
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin(&items);
            match begun {
                Err(conflicts) => {
                    bump(&counters.transactions_refused);
                    counters.transaction_items_conflicted.fetch_add(
                        conflicts.iter().filter(|c| **c).count() as u64,
                        Ordering::Relaxed,
                    );
                    Ok(json_response(
                        StatusCode::BAD_REQUEST,
                        &canceled_body(&conflicts),
                    ))
                }
                Ok(id) => {
                    let _held = Held {
                        shared: &self.shared,
                        id,
                    };
                    if !self.shared.hold.is_zero() {
                        tokio::time::sleep(self.shared.hold).await;
                    }
                    self.forward(&parts, body).await
                }
            }
        } else {
            bump(&counters.writes);
            let conflict = self
                .shared
                .locks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .conflicts(&items)
                .contains(&true);
            if conflict {
                bump(&counters.writes_refused);
                bump(match op {
                    WriteOp::PutItem => &counters.refused_put_item,
                    WriteOp::UpdateItem => &counters.refused_update_item,
                    WriteOp::DeleteItem => &counters.refused_delete_item,
                    _ => &counters.refused_batch_write_item,
                });
                return Ok(json_response(StatusCode::BAD_REQUEST, &conflict_body()));
            }
            self.forward(&parts, body).await
        }
    }

    fn lock_schemas(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.schemas.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn upstream_uri(&self, path_and_query: &str) -> Result<Uri, Dropped> {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(dropped)?);
        Uri::from_parts(parts).map_err(dropped)
    }

    /// The request as received, to the emulator; its answer as received, to the client.
    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, Dropped> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = self.upstream_uri(path)?;
        copy_headers(&parts.headers, req.headers_mut());
        let resp = match self.client.request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                // As if the emulator itself were unreachable: the client's connection is dropped
                // without an answer (a dispatch failure to the SDK, not a 5xx to retry).
                bump(&self.shared.counters.upstream_errors);
                return Err(dropped(e));
            }
        };
        let (rparts, rbody) = resp.into_parts();
        let rbody = match rbody.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                bump(&self.shared.counters.upstream_errors);
                return Err(dropped(e));
            }
        };
        let mut out = Response::new(Full::new(rbody));
        *out.status_mut() = rparts.status;
        copy_headers(&rparts.headers, out.headers_mut());
        Ok(out)
    }

    /// The key attribute names of `table`, asked of the emulator with the client's credentials.
    async fn describe_key_schema(
        &self,
        client_headers: &HeaderMap,
        table: &str,
    ) -> Option<Vec<String>> {
        let mut req = Request::new(Full::new(Bytes::from(
            json!({ "TableName": table }).to_string(),
        )));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.upstream_uri("/").ok()?;
        let h = req.headers_mut();
        for name in [
            "host",
            "authorization",
            "x-amz-date",
            "x-amz-security-token",
        ] {
            if let Some(v) = client_headers.get(name) {
                h.insert(HeaderName::from_static(name), v.clone());
            }
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.DescribeTable"),
        );
        let resp = self.client.request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        let v: Value = serde_json::from_slice(&body).ok()?;
        let names: Vec<String> = v
            .get("Table")?
            .get("KeySchema")?
            .as_array()?
            .iter()
            .filter_map(|k| string(k, "AttributeName").map(str::to_owned))
            .collect();
        (!names.is_empty()).then_some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(table: &str, pk: &str) -> Option<ItemKey> {
        let v = json!({"pk": {"S": pk}, "sk": {"S": "X"}});
        Some(ItemKey::new(table, v.as_object().unwrap()))
    }

    #[test]
    fn a_transaction_meeting_an_item_in_flight_is_refused_item_by_item() {
        let mut locks = LockTable::default();
        let a = locks.begin(&[key("t", "1"), key("t", "2")]).unwrap();
        let refused = locks
            .begin(&[key("t", "3"), key("t", "2"), key("t", "4")])
            .unwrap_err();
        assert_eq!(refused, vec![false, true, false]);
        // A refused transaction holds nothing.
        assert_eq!(locks.items_held(), 2);
        assert_eq!(locks.transactions_in_flight(), 1);
        // Disjoint transactions run side by side.
        let c = locks.begin(&[key("t", "5"), key("u", "1")]).unwrap();
        assert_eq!(locks.transactions_in_flight(), 2);
        locks.finish(a);
        // Once answered, its items are free again.
        let b = locks
            .begin(&[key("t", "3"), key("t", "2"), key("t", "4")])
            .unwrap();
        locks.finish(b);
        locks.finish(c);
        assert_eq!(locks.items_held(), 0);
        assert_eq!(locks.transactions_in_flight(), 0);
    }

    #[test]
    fn the_same_key_in_another_table_is_another_item() {
        let mut locks = LockTable::default();
        locks.begin(&[key("t", "1")]).unwrap();
        assert!(locks.begin(&[key("u", "1")]).is_ok());
        assert_eq!(
            locks.conflicts(&[key("t", "1"), key("u", "1")]),
            [true, true]
        );
        assert_eq!(locks.conflicts(&[key("v", "1"), None]), [false, false]);
    }

    #[test]
    fn an_item_twice_in_one_transaction_is_not_a_conflict_with_itself() {
        let mut locks = LockTable::default();
        let id = locks.begin(&[key("t", "1"), key("t", "1"), None]).unwrap();
        assert_eq!(locks.items_held(), 1);
        locks.finish(id);
        assert_eq!(locks.items_held(), 0);
    }

    #[test]
    fn single_writes_are_checked_and_hold_nothing() {
        let mut locks = LockTable::default();
        locks.begin(&[key("t", "1")]).unwrap();
        assert_eq!(locks.conflicts(&[key("t", "1")]), [true]);
        assert_eq!(locks.conflicts(&[key("t", "2")]), [false]);
        assert_eq!(locks.items_held(), 1);
    }

    #[test]
    fn key_attribute_order_does_not_matter_and_values_do() {
        let a = json!({"pk": {"S": "1"}, "sk": {"S": "X"}});
        let b = json!({"sk": {"S": "X"}, "pk": {"S": "1"}});
        let c = json!({"sk": {"S": "Y"}, "pk": {"S": "1"}});
        let k = |v: &Value| ItemKey::new("t", v.as_object().unwrap());
        assert_eq!(k(&a), k(&b));
        assert_ne!(k(&a), k(&c));
        // A put's item is named by its key attributes alone.
        let item = json!({"pk": {"S": "1"}, "sk": {"S": "X"}, "amount": {"N": "5"}});
        let names = vec!["pk".to_owned(), "sk".to_owned()];
        assert_eq!(
            ItemKey::of_item("t", item.as_object().unwrap(), &names),
            Some(k(&a))
        );
        assert_eq!(
            ItemKey::of_item("t", item.as_object().unwrap(), &["id".to_owned()]),
            None
        );
    }

    #[test]
    fn the_writes_of_each_request_kind_are_read_in_order() {
        let tx = json!({"TransactItems": [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "1"}, "sk": {"S": "X"}, "a": {"N": "1"}}}},
            {"Update": {"TableName": "t", "Key": {"pk": {"S": "2"}, "sk": {"S": "X"}}, "UpdateExpression": "SET a = :a"}},
            {"Delete": {"TableName": "u", "Key": {"pk": {"S": "3"}, "sk": {"S": "X"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"pk": {"S": "4"}, "sk": {"S": "X"}}, "ConditionExpression": "attribute_exists(pk)"}},
            {"Nonsense": {}}
        ]});
        let t = targets(WriteOp::TransactWriteItems, &tx);
        assert_eq!(t.len(), 5);
        assert!(matches!(t[0], Target::Item("t", _)));
        assert!(matches!(t[2], Target::Key("u", _)));
        assert_eq!(t[4], Target::Unknown);
        assert_eq!(tables_of_puts(&t), ["t"]);
        let schema = |_: &str| Some(vec!["pk".to_owned(), "sk".to_owned()]);
        let items: Vec<_> = t.iter().map(|t| t.item(&schema)).collect();
        assert_eq!(items[0], key("t", "1"));
        assert_eq!(items[1], key("t", "2"));
        assert_eq!(items[2], key("u", "3"));
        assert_eq!(items[3], key("t", "4"));
        assert_eq!(items[4], None);

        let batch = json!({"RequestItems": {"t": [
            {"PutRequest": {"Item": {"pk": {"S": "1"}, "sk": {"S": "X"}}}},
            {"DeleteRequest": {"Key": {"pk": {"S": "2"}, "sk": {"S": "X"}}}}
        ]}});
        let items: Vec<_> = targets(WriteOp::BatchWriteItem, &batch)
            .iter()
            .map(|t| t.item(&schema))
            .collect();
        assert_eq!(items, [key("t", "1"), key("t", "2")]);

        let put = json!({"TableName": "t", "Item": {"pk": {"S": "1"}, "sk": {"S": "X"}}});
        assert_eq!(
            targets(WriteOp::PutItem, &put)[0].item(&schema),
            key("t", "1")
        );
        let update = json!({"TableName": "t", "Key": {"pk": {"S": "1"}, "sk": {"S": "X"}}});
        assert_eq!(
            targets(WriteOp::UpdateItem, &update)[0].item(&schema),
            key("t", "1")
        );
        assert_eq!(targets(WriteOp::DeleteItem, &json!({}))[0], Target::Unknown);
    }

    #[test]
    fn only_dynamodb_writes_are_subject_to_the_rule() {
        assert_eq!(
            WriteOp::of_target("DynamoDB_20120810.TransactWriteItems"),
            Some(WriteOp::TransactWriteItems)
        );
        assert_eq!(
            WriteOp::of_target("DynamoDB_20120810.BatchWriteItem"),
            Some(WriteOp::BatchWriteItem)
        );
        for other in [
            "DynamoDB_20120810.GetItem",
            "DynamoDB_20120810.TransactGetItems",
            "DynamoDB_20120810.Query",
            "AmazonSQS.SendMessage",
            "AmazonSSM.GetParameter",
            "PutItem",
        ] {
            assert_eq!(WriteOp::of_target(other), None, "{other}");
        }
    }

    #[test]
    fn refusals_are_shaped_like_dynamodb_s() {
        let b = canceled_body(&[false, true]);
        assert_eq!(
            b["__type"],
            "com.amazonaws.dynamodb.v20120810#TransactionCanceledException"
        );
        assert_eq!(
            b["Message"],
            "Transaction cancelled, please refer cancellation reasons for specific reasons [None, TransactionConflict]"
        );
        assert_eq!(
            b["CancellationReasons"],
            json!([{"Code": "None"}, {"Code": "TransactionConflict", "Message": ONGOING}])
        );
        let c = conflict_body();
        assert_eq!(
            c["__type"],
            "com.amazonaws.dynamodb.v20120810#TransactionConflictException"
        );
        assert_eq!(c["message"], ONGOING);
    }

    /// A stand-in for the emulator: records every request, answers DynamoDB calls with `{}` (a
    /// `pk`/`sk` key schema for DescribeTable) and anything else with 201 and its body echoed.
    type Seen = Arc<Mutex<Vec<(Method, String, HeaderMap, Bytes)>>>;

    async fn fake_upstream() -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let target = parts
                                .headers
                                .get("x-amz-target")
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            log.lock().unwrap().push((
                                parts.method.clone(),
                                parts.uri.to_string(),
                                parts.headers.clone(),
                                body.clone(),
                            ));
                            let resp = if target.ends_with(".DescribeTable") {
                                json_response(
                                    StatusCode::OK,
                                    &json!({"Table": {"KeySchema": [
                                        {"AttributeName": "pk", "KeyType": "HASH"},
                                        {"AttributeName": "sk", "KeyType": "RANGE"}]}}),
                                )
                            } else if target.starts_with(DYNAMODB_TARGET_PREFIX) {
                                json_response(StatusCode::OK, &json!({}))
                            } else {
                                let mut r = Response::new(Full::new(body));
                                *r.status_mut() = StatusCode::CREATED;
                                r.headers_mut()
                                    .insert("x-upstream", HeaderValue::from_static("yes"));
                                r
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn other_requests_pass_through_unchanged() {
        let (upstream, seen) = fake_upstream().await;
        let proxy = start_ephemeral(&upstream, DEFAULT_HOLD).await.unwrap();
        let http = reqwest::Client::new();
        let resp = http
            .put(format!("{}/bucket/a%20key?versionId=3&x=y", proxy.url))
            .header("host", "s3.localhost.example:4566")
            .header("authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc")
            .header("x-amz-target", "AmazonSQS.SendMessage")
            .body("the body")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(resp.headers()["x-upstream"], "yes");
        assert_eq!(resp.text().await.unwrap(), "the body");
        let seen = seen.lock().unwrap();
        let (method, uri, headers, body) = &seen[0];
        assert_eq!(method, Method::PUT);
        assert_eq!(uri, "/bucket/a%20key?versionId=3&x=y");
        assert_eq!(headers["host"], "s3.localhost.example:4566");
        assert!(
            headers["authorization"]
                .to_str()
                .unwrap()
                .ends_with("Signature=abc")
        );
        assert_eq!(headers["x-amz-target"], "AmazonSQS.SendMessage");
        assert_eq!(body.as_ref(), b"the body");
        let stats = proxy.stats.snapshot();
        assert_eq!((stats.requests, stats.dynamodb_requests), (1, 0));
    }

    fn sdk(url: &str) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .http_client(twochan_aws::http_client())
            .endpoint_url(url)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_sdk_sees_dynamodb_s_conflict_errors() {
        use aws_sdk_dynamodb::{
            operation::{put_item::PutItemError, transact_write_items::TransactWriteItemsError},
            types::{AttributeValue as Av, ConditionCheck, Put, TransactWriteItem, Update},
        };
        let (upstream, _) = fake_upstream().await;
        let proxy = start_ephemeral(&upstream, Duration::from_millis(700))
            .await
            .unwrap();
        let db = sdk(&proxy.url);
        let put = |pk: &str| {
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name("t")
                        .item("pk", Av::S(pk.into()))
                        .item("sk", Av::S("X".into()))
                        .item("n", Av::N("1".into()))
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let update = |pk: &str| {
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name("t")
                        .key("pk", Av::S(pk.into()))
                        .key("sk", Av::S("X".into()))
                        .update_expression("SET n = :n")
                        .expression_attribute_values(":n", Av::N("2".into()))
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let check = |pk: &str| {
            TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name("t")
                        .key("pk", Av::S(pk.into()))
                        .key("sk", Av::S("X".into()))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let first = tokio::spawn(
            db.transact_write_items()
                .transact_items(put("1"))
                .transact_items(update("2"))
                .send(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while proxy.stats.snapshot().items_held < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first never got in flight"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let err = db
            .transact_write_items()
            .transact_items(put("3"))
            .transact_items(check("1"))
            .transact_items(update("4"))
            .send()
            .await
            .unwrap_err();
        let Some(TransactWriteItemsError::TransactionCanceledException(e)) = err.as_service_error()
        else {
            panic!("{err:?}");
        };
        let codes: Vec<_> = e
            .cancellation_reasons()
            .iter()
            .map(|r| r.code().unwrap_or_default())
            .collect();
        assert_eq!(codes, ["None", "TransactionConflict", "None"]);
        assert_eq!(e.cancellation_reasons()[1].message(), Some(ONGOING));
        let err = db
            .put_item()
            .table_name("t")
            .item("pk", Av::S("2".into()))
            .item("sk", Av::S("X".into()))
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.as_service_error(),
                Some(PutItemError::TransactionConflictException(_))
            ),
            "{err:?}"
        );
        // A read of the same item passes.
        db.get_item()
            .table_name("t")
            .key("pk", Av::S("2".into()))
            .key("sk", Av::S("X".into()))
            .send()
            .await
            .unwrap();
        first.await.unwrap().unwrap();
        // Answered: the same write goes through.
        db.put_item()
            .table_name("t")
            .item("pk", Av::S("2".into()))
            .item("sk", Av::S("X".into()))
            .send()
            .await
            .unwrap();
        let stats = proxy.stats.snapshot();
        assert_eq!(stats.transactions, 2);
        assert_eq!(stats.transactions_refused, 1);
        assert_eq!(stats.transaction_items_conflicted, 1);
        assert_eq!((stats.writes, stats.writes_refused), (2, 1));
        assert_eq!(stats.refused_by_operation["PutItem"], 1);
        assert_eq!((stats.transactions_in_flight, stats.items_held), (0, 0));
        // The same counters over HTTP.
        let over_http: StatsSnapshot = reqwest::get(format!("{}{STATS_PATH}", proxy.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(over_http, stats);
    }
}
