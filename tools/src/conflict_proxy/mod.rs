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

mod rule;
mod stats;
#[cfg(test)]
mod tests;

pub use rule::*;
pub use stats::*;

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
