//! A merchant's webhook receiver, as small as one can be: HTTP/1.1 on 127.0.0.1, every event
//! checked against its `Twochan-Signature` (HMAC of `t.body` with the endpoint's secret, `t`
//! within 300 s) and handed over on a channel. The demo shows the POS side with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use twochan_domain::{Timestamp, crypto::webhook_signature};

/// How the receiver answers an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 to every try.
    Accept,
    /// 500 to the first `n` tries of each event id, then 200.
    FailFirst(usize),
    /// 500 to every try.
    Refuse,
}

/// One POST as received.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    pub event: Value,
    /// The signature verified with the endpoint's secret, and its `t` is within 300 s of now.
    pub verified: bool,
    /// The `t` of the signature.
    pub t: i64,
}

pub struct Receiver {
    pub url: String,
    secret: Arc<Mutex<String>>,
    events: mpsc::UnboundedReceiver<ReceivedEvent>,
    /// Every try received so far, in order.
    log: Arc<Mutex<Vec<ReceivedEvent>>>,
}

/// What the listener shares with the receiver.
#[derive(Clone)]
struct Shared {
    secret: Arc<Mutex<String>>,
    log: Arc<Mutex<Vec<ReceivedEvent>>>,
    tries: Arc<Mutex<HashMap<String, usize>>>,
    tx: mpsc::UnboundedSender<ReceivedEvent>,
    answer: Answer,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    /// Listens on a free loopback port; every request is answered 200.
    pub async fn start() -> std::io::Result<Receiver> {
        Self::answering(Answer::Accept).await
    }

    /// Listens on a free loopback port, answering as `answer` says.
    pub async fn answering(answer: Answer) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/twochan-events", listener.local_addr()?);
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Shared {
            secret: Arc::default(),
            log: Arc::default(),
            tries: Arc::default(),
            tx,
            answer,
        };
        let (secret, log) = (shared.secret.clone(), shared.log.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Ok(Receiver {
            url,
            secret,
            events,
            log,
        })
    }

    /// Every try received so far, in order.
    pub fn received(&self) -> Vec<ReceivedEvent> {
        lock(&self.log).clone()
    }

    /// The secret the `PUT /v1/webhook-endpoint` answer showed, to verify with.
    pub fn set_secret(&self, secret: &str) {
        *lock(&self.secret) = secret.to_owned();
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: std::time::Duration) -> Option<ReceivedEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn serve(mut stream: TcpStream, shared: Shared) {
    let Some((headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let header = headers
        .get("twochan-signature")
        .cloned()
        .unwrap_or_default();
    let t: i64 = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let secret = lock(&shared.secret).clone();
    let fresh = (Timestamp::now().seconds() - t).abs() <= 300;
    let json = headers.get("content-type").map(String::as_str) == Some("application/json");
    let got = ReceivedEvent {
        event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified: fresh
            && json
            && !secret.is_empty()
            && header == webhook_signature(&secret, t, &body),
        t,
    };
    let id = got.event["id"].as_str().unwrap_or_default().to_owned();
    let tries = {
        let mut tries = lock(&shared.tries);
        let n = tries.entry(id).or_default();
        *n += 1;
        *n
    };
    let status = match shared.answer {
        Answer::Accept => "200 OK",
        Answer::FailFirst(n) if tries > n => "200 OK",
        Answer::FailFirst(_) | Answer::Refuse => "500 Internal Server Error",
    };
    lock(&shared.log).push(got.clone());
    let _ = shared.tx.send(got);
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
}

async fn read_request(stream: &mut TcpStream) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((headers, buf[head_end..head_end + len].to_vec()))
}
