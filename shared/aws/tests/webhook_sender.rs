//! The webhook sender against tiny hand-written HTTP/1.1 servers on 127.0.0.1 (a local stack's
//! `allow_loopback`), each recording what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use twochan_aws::webhook_sender::{Delivery, MAX_RESPONSE_BYTES, WebhookSender};
use twochan_domain::Timestamp;
use twochan_domain::crypto::webhook_signature;
use twochan_domain::webhook::{WebhookSecret, WebhookUrl};

/// One request as the server read it.
#[derive(Debug, Clone)]
struct Request {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the server answers.
#[derive(Clone)]
enum Answer {
    Status(u16, &'static str),
    Redirect(u16, String),
    /// Sleeps this long, then answers 200.
    Slow(Duration),
    /// 200 with a `len`-byte body: the first 256 KiB at once, the rest after a pause. How much
    /// the server managed to write goes to `written`.
    Huge {
        len: usize,
        pause: Duration,
        written: Arc<Mutex<Option<usize>>>,
    },
}

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    async fn start(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, recorded) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let mut stream = stream;
                    if let Some(request) = read_request(&mut stream).await {
                        recorded.lock().unwrap().push(request);
                        respond(&mut stream, answer).await;
                    }
                });
            }
        });
        Server { addr, requests }
    }

    fn url(&self, path: &str) -> WebhookUrl {
        WebhookUrl::parse(&format!("http://{}{path}", self.addr), true).unwrap()
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        request_line,
        headers,
        body,
    })
}

async fn respond(stream: &mut TcpStream, answer: Answer) {
    match answer {
        Answer::Status(status, body) => {
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        }
        Answer::Redirect(status, location) => {
            let head = format!(
                "HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
        }
        Answer::Slow(pause) => {
            tokio::time::sleep(pause).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
        Answer::Huge {
            len,
            pause,
            written,
        } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes()).await;
            let block = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < len {
                if sent == 256 * 1024 {
                    tokio::time::sleep(pause).await;
                }
                let n = block.len().min(len - sent);
                if stream.write_all(&block[..n]).await.is_err() {
                    break;
                }
                sent += n;
            }
            *written.lock().unwrap() = Some(sent);
        }
    }
}

const BODY: &[u8] = br#"{"id":"evt_01JDQ8Z6V3W4X5Y6Z7A8B9C0DE","type":"payment.settled","data":{"payment":{"reference":"caf\u00e9"}}}"#;

#[tokio::test]
async fn a_signed_post_arrives_and_its_signature_verifies() {
    let server = Server::start(Answer::Status(200, "ok")).await;
    let secret = WebhookSecret::generate();
    let now = Timestamp::now();
    let sender = WebhookSender::new(true);
    let outcome = sender
        .deliver(&server.url("/hooks/2ch?x=1"), &secret, BODY, now)
        .await;
    assert_eq!(outcome, Delivery::Delivered { status: 200 });

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.request_line, "POST /hooks/2ch?x=1 HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.body, BODY, "the exact bytes");
    let signature = request.header("twochan-signature").expect("signed");
    let t: i64 = signature
        .strip_prefix("t=")
        .and_then(|s| s.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect("t=<seconds>,...");
    assert_eq!(t, now.seconds());
    assert_eq!(
        signature,
        webhook_signature(secret.as_str(), t, &request.body)
    );
    assert!(!signature.contains(secret.as_str()));
    // A receiver that checks with another secret, or another body, does not verify.
    assert_ne!(
        signature,
        webhook_signature(WebhookSecret::generate().as_str(), t, &request.body)
    );
    assert_ne!(signature, webhook_signature(secret.as_str(), t, b"{}"));
}

#[tokio::test]
async fn any_2xx_is_delivered_and_anything_else_rejected() {
    let sender = WebhookSender::new(true);
    let secret = WebhookSecret::generate();
    for (status, expected) in [
        (201, Delivery::Delivered { status: 201 }),
        (204, Delivery::Delivered { status: 204 }),
        (299, Delivery::Delivered { status: 299 }),
        (304, Delivery::Rejected { status: 304 }),
        (400, Delivery::Rejected { status: 400 }),
        (404, Delivery::Rejected { status: 404 }),
        (500, Delivery::Rejected { status: 500 }),
        (503, Delivery::Rejected { status: 503 }),
    ] {
        let body = if status == 204 || status == 304 {
            ""
        } else {
            "x"
        };
        let server = Server::start(Answer::Status(status, body)).await;
        let outcome = sender
            .deliver(&server.url("/"), &secret, BODY, Timestamp::now())
            .await;
        assert_eq!(outcome, expected, "{status}");
        assert_eq!(server.requests().len(), 1);
    }
}

#[tokio::test]
async fn redirects_are_rejected_and_not_followed() {
    let target = Server::start(Answer::Status(200, "ok")).await;
    let sender = WebhookSender::new(true);
    for status in [301, 302, 303, 307, 308] {
        let redirecting = Server::start(Answer::Redirect(
            status,
            format!("http://{}/stolen", target.addr),
        ))
        .await;
        let outcome = sender
            .deliver(
                &redirecting.url("/hook"),
                &WebhookSecret::generate(),
                BODY,
                Timestamp::now(),
            )
            .await;
        assert_eq!(outcome, Delivery::Rejected { status }, "{status}");
        assert_eq!(redirecting.requests().len(), 1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(target.requests().is_empty(), "a redirect was followed");
}

#[tokio::test]
async fn a_try_ends_after_5_seconds() {
    let server = Server::start(Answer::Slow(Duration::from_secs(7))).await;
    let sender = WebhookSender::new(true);
    let started = Instant::now();
    let outcome = sender
        .deliver(
            &server.url("/slow"),
            &WebhookSecret::generate(),
            BODY,
            Timestamp::now(),
        )
        .await;
    let took = started.elapsed();
    let Delivery::Failed { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.starts_with("timed out"), "{reason}");
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_millis(5500),
        "{took:?}"
    );
    assert_eq!(server.requests().len(), 1, "the request itself was sent");
}

#[tokio::test]
async fn a_huge_answer_is_not_read() {
    const LEN: usize = 10 * 1024 * 1024;
    let written = Arc::new(Mutex::new(None));
    let server = Server::start(Answer::Huge {
        len: LEN,
        pause: Duration::from_secs(2),
        written: written.clone(),
    })
    .await;
    let sender = WebhookSender::new(true);
    let started = Instant::now();
    let outcome = sender
        .deliver(
            &server.url("/big"),
            &WebhookSecret::generate(),
            BODY,
            Timestamp::now(),
        )
        .await;
    // Reading the whole body would have waited out the server's pause.
    assert_eq!(outcome, Delivery::Delivered { status: 200 });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    const { assert!(MAX_RESPONSE_BYTES <= 256 * 1024) };
    // After its pause the server finds the connection gone: the 10 MB were never taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sent = loop {
        if let Some(sent) = *written.lock().unwrap() {
            break sent;
        }
        assert!(
            Instant::now() < deadline,
            "the server never finished writing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(sent < LEN, "the client took all {sent} bytes");
}

#[tokio::test]
async fn a_loopback_endpoint_is_forbidden_without_allow_loopback() {
    let server = Server::start(Answer::Status(200, "ok")).await;
    let url = server.url("/hook");
    assert!(url.is_loopback());
    let outcome = WebhookSender::new(false)
        .deliver(&url, &WebhookSecret::generate(), BODY, Timestamp::now())
        .await;
    let Delivery::Forbidden { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.starts_with("url: "), "{reason}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_closed_port_fails_and_is_retried_later() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/x"), true).unwrap();
    let secret = WebhookSecret::generate();
    let outcome = WebhookSender::new(true)
        .deliver(&url, &secret, BODY, Timestamp::now())
        .await;
    let Delivery::Failed { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.starts_with("could not connect"), "{reason}");
    // Neither the secret nor anything of the signature appears in what is returned.
    let shown = format!("{outcome:?}");
    assert!(!shown.contains(&secret.as_str()[6..]), "{shown}");
    assert!(!shown.contains("v1="), "{shown}");
}

#[test]
fn hosts_that_name_loopback_or_addresses_are_refused_before_any_request() {
    // The URL rules refuse what the resolver would anyway; a sender never sees these.
    for url in [
        "https://localhost/hook",
        "https://localhost./hook",
        "https://api.localhost/hook",
        "https://127.0.0.1/hook",
        "https://2130706433/hook",
        "https://0x7f.1/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
    ] {
        assert!(WebhookUrl::parse(url, true).is_err(), "{url}");
        assert!(WebhookUrl::parse(url, false).is_err(), "{url}");
    }
}

#[tokio::test]
async fn a_name_that_does_not_resolve_fails_and_is_retried_later() {
    // `.invalid` never resolves (RFC 6761), online or off.
    let url = WebhookUrl::parse("https://hooks.example.invalid/2ch", false).unwrap();
    let outcome = WebhookSender::new(false)
        .deliver(&url, &WebhookSecret::generate(), BODY, Timestamp::now())
        .await;
    let Delivery::Failed { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(!reason.contains("hooks.example.invalid/2ch"), "{reason}");
}
