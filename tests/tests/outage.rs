//! The emulator itself stopped, mid-flow and mid-handler: callers get 503 with `Retry-After`,
//! nothing is half-written, and once it is back (with its persisted state) the same retries
//! complete the payment.
//!
//! The stack's emulator is shared by every other test, so this test starts a private MiniStack on
//! a free port with its own state directory, and runs the real handlers in this process against
//! it with the functions' own SDK settings (`twochan_aws::sdk_defaults`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Harness, answer, emulator_config, registration_request, request};
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use serde_json::{Value, json};
use twochan_api::{
    App,
    routes::{Function, handle},
    settlement::settle_batch,
};
use twochan_aws::{
    AwsClients, DynamoStore, SqsEventQueue, SqsSettlementQueue, failpoints::Probe, sdk_defaults,
};
use twochan_domain::{
    MerchantId, PaymentId, PaymentStatus, Timestamp, UniqueCode,
    crypto::IssuedSecret,
    ports::{Devices, Directory, Payments},
};
use twochan_tools::{Device, unique_id};

/// A private MiniStack process, stopped gracefully (SIGTERM), which is when it saves its state.
struct Emulator {
    port: u16,
    state_dir: PathBuf,
    child: Option<Child>,
}

impl Emulator {
    fn start(port: u16, state_dir: PathBuf) -> Emulator {
        let mut e = Emulator {
            port,
            state_dir,
            child: None,
        };
        e.restart();
        e
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let bin = concat!(env!("CARGO_MANIFEST_DIR"), "/../.local/venv/bin/ministack");
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GATEWAY_PORT", self.port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("PERSIST_STATE", "1")
            .env("STATE_DIR", &self.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e} (run make setup)"));
        self.child = Some(child);
        let health = format!("{}/_ministack/health", self.endpoint());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // A MiniStack that could not bind its port exits: whatever answers there is not it.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("private MiniStack exited ({status}) on {}", self.endpoint());
            }
            if std::process::Command::new("curl")
                .args(["-fsS", "-o", "/dev/null", &health])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("private MiniStack did not come up on {}", self.endpoint());
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free port below the kernel's ephemeral range: a port the kernel handed out for port 0 could
/// be handed again to another test's listener (a conflict proxy, a webhook receiver) before the
/// private MiniStack binds it, and the health check would then find that one.
fn free_port() -> u16 {
    let start = 20_000 + (std::process::id() % 5_000) as u16;
    (start..30_000)
        .chain(20_000..start)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below 30000")
}

/// The handlers on the private emulator, and what they need to be called.
struct PrivateStack {
    app: App<DynamoStore, SqsSettlementQueue, SqsEventQueue>,
    config: aws_config::SdkConfig,
    table: String,
    queue_url: String,
    events_url: String,
    merchant_key: String,
    token: String,
}

impl PrivateStack {
    /// The handlers with clients carrying `probe`.
    fn probed(&self, probe: &Probe) -> App<DynamoStore, SqsSettlementQueue, SqsEventQueue> {
        let c = probe.clients(&self.config);
        App {
            store: DynamoStore::new(c.dynamodb, self.table.clone()),
            queue: SqsSettlementQueue::new(c.sqs.clone(), self.queue_url.clone()),
            issuer_keys: self.app.issuer_keys.clone(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(c.sqs.clone(), self.events_url.clone()),
            allow_loopback_webhooks: true,
        }
    }

    async fn create_payment(&self, device: &Device) -> (u16, Value) {
        let beacon = device.beacon();
        let body = json!({"unique_code": beacon.code, "beacon_proof": beacon.proof,
                          "amount": 1250, "currency": "EUR", "pos_id": "pos-1"});
        let key = unique_id("k-");
        let req = request(
            "POST",
            "/v1/payments",
            &self.merchant_key,
            &[("idempotency-key", &key)],
            Some(&body),
        );
        answer(&handle(&self.app, Function::PaymentRequest, req).await)
    }
}

fn confirm_request(
    w: &PrivateStack,
    payment: &Value,
    device: &Device,
    counter: u64,
) -> lambda_http::Request {
    let id = payment["payment_id"].as_str().unwrap();
    let body = json!({"auth_code": device.auth_code_for(payment, counter), "counter": counter.to_string()});
    request(
        "POST",
        &format!("/v1/payments/{id}/confirm"),
        &w.token,
        &[],
        Some(&body),
    )
}

/// Asserts the contract's 503: `unavailable`, `Retry-After`, and returns how long it took.
fn assert_unavailable(resp: &lambda_http::Response<lambda_http::Body>, what: &str) {
    assert_eq!(resp.status().as_u16(), 503, "{what}: {:?}", answer(resp));
    assert!(
        resp.headers().contains_key("retry-after"),
        "{what}: no Retry-After"
    );
    assert_eq!(answer(resp).1["error"]["code"], "unavailable", "{what}");
}

/// Settles what the queue holds; returns how many messages it settled.
async fn drain(w: &PrivateStack) -> usize {
    let mut settled = 0;
    loop {
        let msgs = AwsClients::from_config(&w.config)
            .sqs
            .receive_message()
            .queue_url(&w.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive")
            .messages
            .unwrap_or_default();
        if msgs.is_empty() {
            return settled;
        }
        for m in msgs {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.body = m.body.clone();
            let mut event = SqsEvent::default();
            event.records = vec![record];
            assert!(
                settle_batch(&w.app.store, &w.app.events, event)
                    .await
                    .batch_item_failures
                    .is_empty()
            );
            AwsClients::from_config(&w.config)
                .sqs
                .delete_message()
                .queue_url(&w.queue_url)
                .receipt_handle(m.receipt_handle.unwrap_or_default())
                .send()
                .await
                .expect("delete");
            settled += 1;
        }
    }
}

/// The state a half-write would break: payment status, the device's counter and lock.
async fn state(
    w: &PrivateStack,
    id: &PaymentId,
    code: &UniqueCode,
) -> (PaymentStatus, u64, Option<PaymentId>) {
    let p = w
        .app
        .store
        .payment(id)
        .await
        .unwrap()
        .expect("payment survived the restart");
    let d = w
        .app
        .store
        .device(code)
        .await
        .unwrap()
        .expect("device survived the restart");
    (
        p.status,
        d.last_counter.get(),
        d.pending.map(|(held, _)| held),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_outage_gives_503_and_the_same_retries_complete() {
    let ctx = Harness::new().await;
    let state_dir = std::env::temp_dir().join(unique_id("twochan-outage-"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let emulator = Arc::new(Mutex::new(Emulator::start(free_port(), state_dir.clone())));
    let endpoint = emulator.lock().unwrap().endpoint();
    let config = emulator_config(sdk_defaults(), &endpoint).await;
    let clients = AwsClients::from_config(&config);
    let table = "twochan-outage".to_owned();
    crate::common::create_table_like(&ctx.dynamodb, &ctx.table, &clients.dynamodb, &table).await;
    let queue_url = clients
        .sqs
        .create_queue()
        .queue_name("twochan-outage")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let events_url = clients
        .sqs
        .create_queue()
        .queue_name("twochan-outage-events")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let store = DynamoStore::new(clients.dynamodb.clone(), table.clone());
    let merchant = MerchantId::try_from("outage-merchant").unwrap();
    let key = IssuedSecret::generate("mk_");
    store
        .put_merchant(&merchant, &key.hash, Timestamp::now())
        .await
        .unwrap();
    let mut w = PrivateStack {
        app: App {
            store,
            queue: SqsSettlementQueue::new(clients.sqs.clone(), queue_url.clone()),
            issuer_keys: ctx.master.clone().into(),
            pending_ttl_seconds: 120,
            events: SqsEventQueue::new(clients.sqs.clone(), events_url.clone()),
            allow_loopback_webhooks: true,
        },
        config,
        table,
        queue_url,
        events_url,
        merchant_key: key.secret,
        token: String::new(),
    };
    let device = ctx.device();
    let code = UniqueCode::try_from(device.code()).unwrap();
    let terminal = unique_id("term-");
    let reg = registration_request(&w.app.store, &device, &terminal).await;
    let (status, body) = answer(&handle(&w.app, Function::Registration, reg).await);
    assert_eq!(status, 201, "{body}");
    w.token = body["terminal_token"].as_str().unwrap().to_owned();

    // 1. Stopped between two requests of the flow: every call is 503, fast, and writes nothing.
    let (status, p1) = w.create_payment(&device).await;
    assert_eq!(status, 201, "{p1}");
    let id1 = PaymentId::try_from(p1["payment_id"].as_str().unwrap()).unwrap();
    emulator.lock().unwrap().stop();
    let started = Instant::now();
    let resp = handle(
        &w.app,
        Function::Confirmation,
        confirm_request(&w, &p1, &device, 1),
    )
    .await;
    let outage_answer = started.elapsed();
    assert_unavailable(&resp, "confirm during the outage");
    assert!(
        outage_answer < Duration::from_secs(6),
        "503 took {outage_answer:?}"
    );
    println!(
        "outage: confirm answered 503 in {} ms",
        outage_answer.as_millis()
    );
    let get = request(
        "GET",
        &format!("/v1/payments/{id1}"),
        &w.merchant_key,
        &[],
        None,
    );
    assert_unavailable(&handle(&w.app, Function::PaymentRequest, get).await, "get");
    let (status, _) = w.create_payment(&device).await;
    assert_eq!(status, 503, "create during the outage");
    emulator.lock().unwrap().restart();
    assert_eq!(
        state(&w, &id1, &code).await,
        (PaymentStatus::Pending, 0, Some(id1.clone()))
    );
    // The same retry now goes through and settles.
    let resp = handle(
        &w.app,
        Function::Confirmation,
        confirm_request(&w, &p1, &device, 1),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200, "{:?}", answer(&resp));
    assert_eq!(drain(&w).await, 1);
    assert_eq!(
        state(&w, &id1, &code).await,
        (PaymentStatus::Settled, 1, None)
    );

    // 2. Stopped inside the confirmation handler, just before its settlement message (call 2),
    //    before its webhook event (call 3, after the settlement message went out) and just before
    //    its transaction (call 4, after both): nothing of the confirmation is written either way,
    //    and the same retry completes it. A message sent before the stop is then settled with the
    //    retry's, once (the other is a duplicate).
    for (at, op, counter, messages) in [
        (2, "SQS.SendMessage", 2, 1),
        (3, "SQS.SendMessage", 3, 2),
        (4, "DynamoDB.TransactWriteItems", 4, 2),
    ] {
        let (status, p) = w.create_payment(&device).await;
        assert_eq!(status, 201, "{p}");
        let id = PaymentId::try_from(p["payment_id"].as_str().unwrap()).unwrap();
        let stopper = emulator.clone();
        let probe = Probe::with_hook(at, move || stopper.lock().unwrap().stop());
        let resp = handle(
            &w.probed(&probe),
            Function::Confirmation,
            confirm_request(&w, &p, &device, counter),
        )
        .await;
        assert_unavailable(
            &resp,
            &format!("confirm with the emulator stopped before call {at}"),
        );
        assert_eq!(probe.calls().len(), at + 1, "{:?}", probe.calls());
        assert_eq!(
            probe.calls()[at],
            op,
            "the emulator stopped before another call"
        );
        emulator.lock().unwrap().restart();
        let after = state(&w, &id, &code).await;
        let expected = (PaymentStatus::Pending, counter - 1, Some(id.clone()));
        assert_eq!(after, expected, "half-written? stopped before call {at}");
        let resp = handle(
            &w.app,
            Function::Confirmation,
            confirm_request(&w, &p, &device, counter),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 200, "{:?}", answer(&resp));
        assert_eq!(
            drain(&w).await,
            messages,
            "settlement messages after the retry"
        );
        assert_eq!(
            state(&w, &id, &code).await,
            (PaymentStatus::Settled, counter, None)
        );
        let entries = w.app.store.ledger_entries(&id).await.unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
    }
    emulator.lock().unwrap().stop();
    let _ = std::fs::remove_dir_all(&state_dir);
}
