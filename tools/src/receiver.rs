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
}

impl Receiver {
    /// Listens on a free loopback port; every request is answered 200.
    pub async fn start() -> std::io::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/twochan-events", listener.local_addr()?);
        let secret = Arc::new(Mutex::new(String::new()));
        let (tx, events) = mpsc::unbounded_channel();
        let key = secret.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, key) = (tx.clone(), key.clone());
                tokio::spawn(async move {
                    if let Some(event) = serve(stream, &key).await {
                        let _ = tx.send(event);
                    }
                });
            }
        });
        Ok(Receiver {
            url,
            secret,
            events,
        })
    }

    /// The secret the `PUT /v1/webhook-endpoint` answer showed, to verify with.
    pub fn set_secret(&self, secret: &str) {
        *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = secret.to_owned();
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: std::time::Duration) -> Option<ReceivedEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

async fn serve(mut stream: TcpStream, secret: &Mutex<String>) -> Option<ReceivedEvent> {
    let (headers, body) = read_request(&mut stream).await?;
    let _ = stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let header = headers
        .get("twochan-signature")
        .cloned()
        .unwrap_or_default();
    let t: i64 = header
        .split(',')
        .find_map(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let secret = secret.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let fresh = (Timestamp::now().seconds() - t).abs() <= 300;
    Some(ReceivedEvent {
        event: serde_json::from_slice(&body).unwrap_or(Value::Null),
        verified: fresh && !secret.is_empty() && header == webhook_signature(&secret, t, &body),
        t,
    })
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
