//! Sends one webhook try: an HTTPS POST of a signed event to a merchant's endpoint.
//!
//! The endpoint is chosen by a merchant, so the request must not become a way into our network
//! (server-side request forgery): the URL is checked against the contract's rules again before
//! every try ([`WebhookUrl::parse`]), every address a host name resolves to must be globally
//! routable ([`is_globally_routable`]; the check sits in the client's DNS resolver, so it holds
//! for the address actually connected to), redirects are not followed, no proxy is taken from
//! the environment, a try ends after 5 s, and at most 1 KiB of an answer is read.
//!
//! Neither the secret nor the signature is logged or returned; the signature header is marked
//! sensitive, so it is redacted wherever the HTTP stack formats headers.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use rustls_platform_verifier::BuilderVerifierExt;
use twochan_domain::Timestamp;
use twochan_domain::crypto::webhook_signature;
use twochan_domain::webhook::{WebhookSecret, WebhookUrl};

/// The header that carries `t=<unix seconds>,v1=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "Twochan-Signature";
/// A try succeeds on a 2xx within this time (contract: "any 2xx within 5 s").
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// At most this much of an answer's body is read; the rest is left unread.
pub const MAX_RESPONSE_BYTES: usize = 1024;

/// The outcome of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer: the event is delivered.
    Delivered { status: u16 },
    /// Any other answer, 3xx included (redirects are not followed): retry later.
    Rejected { status: u16 },
    /// No answer: timeout, refused or reset connection, DNS failure, TLS failure. Retry later.
    Failed { reason: String },
    /// The URL, or every address its host resolves to, is one we do not send to. Retrying does
    /// not help unless the merchant's endpoint (or its DNS) changes.
    Forbidden { reason: String },
}

/// The webhook HTTP client: one per process, cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    allow_loopback: bool,
}

impl WebhookSender {
    /// `allow_loopback` is for a local stack only (`make up`): it admits
    /// `http://127.0.0.1:<port>/...` endpoints and the address 127.0.0.1.
    pub fn new(allow_loopback: bool) -> WebhookSender {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config())
            .http1_only()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .no_proxy()
            .dns_resolver(GlobalOnlyResolver { allow_loopback })
            .user_agent("twochan-webhooks/1")
            .build()
            .expect("the webhook client's fixed configuration builds");
        WebhookSender {
            client,
            allow_loopback,
        }
    }

    /// One try: POSTs `body` to `url`, signed with `secret` at `now`.
    pub async fn deliver(
        &self,
        url: &WebhookUrl,
        secret: &WebhookSecret,
        body: &[u8],
        now: Timestamp,
    ) -> Delivery {
        // The URL was checked when it was set; check it again under this sender's rules (a
        // loopback endpoint stored by a local stack is refused anywhere else).
        let url = match WebhookUrl::parse(url.as_str(), self.allow_loopback) {
            Ok(url) => url,
            Err(e) => {
                return Delivery::Forbidden {
                    reason: e.to_string(),
                };
            }
        };
        let mut signature =
            HeaderValue::from_str(&webhook_signature(secret.as_str(), now.seconds(), body))
                .expect("a signature header is ASCII");
        signature.set_sensitive(true);
        self.post(url.as_str(), signature, body).await
    }

    /// The request itself, for a URL already checked.
    async fn post(&self, url: &str, signature: HeaderValue, body: &[u8]) -> Delivery {
        let sent = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return failure(e),
        };
        let status = response.status();
        // Read a little of the answer (a receiver may expect its answer to be read) and drop
        // the rest unread with the connection: a huge or endless body costs nothing. A body
        // that errs or stalls (until the overall timeout) does not change the outcome: the
        // status has arrived.
        let mut read = 0;
        while read < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        drop(response);
        let status = status.as_u16();
        if (200..300).contains(&status) {
            Delivery::Delivered { status }
        } else {
            Delivery::Rejected { status }
        }
    }
}

/// What became of a request that got no answer. The URL is left out of the reason (it is the
/// merchant's, and may carry its own tokens); headers never appear in reqwest's errors.
fn failure(e: reqwest::Error) -> Delivery {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return Delivery::Forbidden {
                reason: refused.to_string(),
            };
        }
        source = err.source();
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut reason = format!("{what}: {e}");
    let mut source = e.source();
    while let Some(err) = source {
        reason.push_str(": ");
        reason.push_str(&err.to_string());
        source = err.source();
    }
    Delivery::Failed { reason }
}

/// TLS for every reqwest client of the workspace (the webhook sender, the tools, the tests):
/// rustls on ring, as the AWS clients ([`crate::http_client`]), with the system's roots.
pub fn tls_config() -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions");
    match builder.clone().with_platform_verifier() {
        Ok(builder) => builder.with_no_client_auth(),
        Err(e) => {
            // No CA roots on this machine: every HTTPS try fails (and is retried) until there
            // are, rather than the whole function failing to start.
            tracing::error!(error = %e, "webhook sender: no TLS roots; HTTPS deliveries will fail");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}

/// Resolves with the system resolver and keeps only the addresses we may send to.
#[derive(Debug, Clone, Copy)]
struct GlobalOnlyResolver {
    allow_loopback: bool,
}

impl Resolve for GlobalOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (permitted, refused): (Vec<_>, Vec<_>) = found
                .into_iter()
                .partition(|a| is_permitted(a.ip(), allow_loopback));
            if permitted.is_empty() && !refused.is_empty() {
                let refused: Vec<_> = refused.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(AddressRefused(format!(
                    "{host} resolves only to addresses that are not globally routable ({})",
                    refused.join(", ")
                ))) as _);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The resolver's refusal, recognised in a request's error chain as [`Delivery::Forbidden`].
#[derive(Debug)]
struct AddressRefused(String);

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for AddressRefused {}

/// Whether the sender may connect to `ip`: a globally routable address, or 127.0.0.1 itself when
/// `allow_loopback` (a local stack).
pub fn is_permitted(ip: IpAddr, allow_loopback: bool) -> bool {
    is_globally_routable(ip) || (allow_loopback && ip == IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Whether `ip` is a public unicast address. Refused: "this network" 0/8 (and unspecified),
/// private 10/8, 172.16/12, 192.168/16, CGNAT 100.64/10, loopback 127/8, link-local 169.254/16
/// (cloud metadata), IETF protocol assignments 192.0.0/24, documentation 192.0.2/24,
/// 198.51.100/24, 203.0.113/24, benchmarking 198.18/15, the 6to4 relay 192.88.99/24, multicast
/// 224/4, reserved 240/4 and broadcast. In IPv6 only global unicast 2000::/3 is accepted (so
/// `::`, `::1`, ULA fc00::/7, link-local fe80::/10, site-local, multicast, discard 100::/64 are
/// refused), less 2001::/23 (IETF: Teredo, benchmarking, ORCHID), documentation 2001:db8::/32 and
/// 3fff::/20, and 6to4 2002::/16; an IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`)
/// address is judged by its IPv4 address.
pub fn is_globally_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    const REFUSED: [([u8; 4], u32); 15] = [
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 0, 2, 0], 24),
        ([192, 88, 99, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([198, 51, 100, 0], 24),
        ([203, 0, 113, 0], 24),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    let a = u32::from(ip);
    !REFUSED
        .iter()
        .any(|&(net, len)| a >> (32 - len) == u32::from_be_bytes(net) >> (32 - len))
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_global_v4(v4);
    }
    let a = u128::from(ip);
    let within = |net: Ipv6Addr, len: u32| a >> (128 - len) == u128::from(net) >> (128 - len);
    if within(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return is_global_v4(Ipv4Addr::from(a as u32));
    }
    within(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3)
        && !within(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23)
        && !within(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32)
        && !within(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16)
        && !within(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20)
}

impl twochan_domain::ports::WebhookTransport for WebhookSender {
    async fn deliver(
        &self,
        url: &WebhookUrl,
        secret: &WebhookSecret,
        body: &[u8],
        now: Timestamp,
    ) -> twochan_domain::ports::Delivery {
        use twochan_domain::ports::Delivery as Outcome;
        match WebhookSender::deliver(self, url, secret, body, now).await {
            Delivery::Delivered { .. } => Outcome::Delivered,
            Delivery::Rejected { status } => Outcome::Retry(format!("answered {status}")),
            Delivery::Failed { reason } => Outcome::Retry(reason),
            Delivery::Forbidden { reason } => Outcome::Forbidden(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_routable() {
        for refused in [
            // IPv4
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.255",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.0.1",
            "192.168.255.255",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.1.1",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "100::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "3fff::1",
            "5f00::1",
        ] {
            assert!(!is_globally_routable(ip(refused)), "{refused}");
            assert!(!is_permitted(ip(refused), false), "{refused}");
        }
        for global in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "169.255.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "203.0.114.1",
            "223.255.255.255",
            "93.184.215.14",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "2001:4860:4860::8888",
            "2001:200::1",
            "3ffe::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_globally_routable(ip(global)), "{global}");
            assert!(is_permitted(ip(global), false), "{global}");
        }
    }

    #[test]
    fn loopback_is_permitted_only_as_127_0_0_1_and_only_when_allowed() {
        assert!(!is_permitted(ip("127.0.0.1"), false));
        assert!(is_permitted(ip("127.0.0.1"), true));
        for other in [
            "127.0.0.2",
            "::1",
            "::ffff:127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
        ] {
            assert!(!is_permitted(ip(other), true), "{other}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_loopback_addresses() {
        // `localhost` resolves from /etc/hosts, with or without a network.
        let refused = GlobalOnlyResolver {
            allow_loopback: false,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .err()
        .expect("localhost is refused");
        assert!(
            refused.downcast_ref::<AddressRefused>().is_some(),
            "{refused}"
        );
        assert!(refused.to_string().contains("127.0.0.1"), "{refused}");

        let allowed: Vec<_> = GlobalOnlyResolver {
            allow_loopback: true,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .unwrap()
        .map(|a| a.ip())
        .collect();
        assert_eq!(allowed, [ip("127.0.0.1")]);
    }

    /// A host name that resolves to 127.0.0.1 (no URL rule catches a public-looking name whose
    /// DNS points inward): the client's resolver refuses it, and nothing is sent.
    #[tokio::test]
    async fn the_client_does_not_connect_to_a_name_of_loopback_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sender = WebhookSender::new(false);
        let signature = HeaderValue::from_static("t=1,v1=00");
        // `post` skips the URL rules (which refuse `localhost` by name) to reach the resolver.
        let outcome = sender
            .post(&format!("http://localhost:{port}/hook"), signature, b"{}")
            .await;
        let Delivery::Forbidden { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.contains("not globally routable"), "{reason}");
        let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
        assert!(
            accepted.is_err(),
            "a connection reached the loopback listener"
        );
    }

    #[test]
    fn delivery_reasons_never_carry_the_url() {
        // reqwest puts the URL in its errors' Display; `failure` strips it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = rt.block_on(async {
            // A port that was just free: nothing listens there.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            drop(listener);
            WebhookSender::new(true)
                .post(
                    &format!("http://127.0.0.1:{port}/hook?token=merchant-private"),
                    HeaderValue::from_static("t=1,v1=00"),
                    b"{}",
                )
                .await
        });
        let Delivery::Failed { reason } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(reason.starts_with("could not connect"), "{reason}");
        assert!(!reason.contains("merchant-private"), "{reason}");
    }
}
