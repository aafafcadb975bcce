//! `make demo`: one complete two-channel payment on the running stack, each step printed on its
//! channel, until the payment is settled and the merchant's balance shows it.

use std::time::{Duration, Instant};

use twochan_domain::crypto::MasterKey;
use twochan_tools::{Api, Device, Phone, Pos, receiver::Receiver, stack::Stack, unique_id};

fn step(actor: &str, channel: &str, text: impl AsRef<str>) {
    println!("{actor:<7}│ {channel:<14}│ {}", text.as_ref());
}

fn fail(msg: impl AsRef<str>) -> ! {
    eprintln!("demo failed: {}", msg.as_ref());
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let stack = Stack::load();
    let get = |k: &str| stack.require(k).unwrap_or_else(|e| fail(e)).to_owned();
    let api = Api::new(&get("API_URL"));
    let master = MasterKey::from_hex(&get("ISSUER_MASTER_KEY"))
        .unwrap_or_else(|_| fail("ISSUER_MASTER_KEY must be 64 hex characters"));
    let started = Instant::now();

    // A device fresh from the factory: its key is derived from the issuer master key.
    let mut device = Device::manufacture(&master, &unique_id("demo-beacon-"));
    let mut phone = Phone::new(api.clone(), &unique_id("demo-phone-"));
    let pos = Pos::new(
        api.clone(),
        &get("MERCHANT_ID"),
        &get("MERCHANT_API_KEY"),
        "demo-pos-1",
    );
    println!("Two-channel payment against {}\n", api.base_url());

    let beacon = device.beacon();
    step(
        "device",
        "beacon",
        format!(
            "broadcasts unique code {} with proof {} (changes every 30 s)",
            beacon.code, beacon.proof
        ),
    );
    let r = phone
        .challenge(device.code())
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let challenge = match r.json["challenge"].as_str() {
        Some(c) if r.status == 201 => c.to_owned(),
        _ => fail(format!("challenge answered {} {}", r.status, r.json)),
    };
    step(
        "phone",
        "HTTPS",
        format!(
            "POST /v1/devices/challenges → {} (challenge {}…, single use, expires {})",
            r.status,
            &challenge[..12],
            r.json["expires_at"]
        ),
    );
    step(
        "device",
        "short-range",
        format!(
            "pairs with the phone and signs the challenge for terminal {}",
            phone.terminal_id
        ),
    );
    let proof = device.registration_proof(&phone.terminal_id, &challenge);
    let r = phone
        .register_with(device.code(), &challenge, &proof)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    if r.status != 201 {
        fail(format!("registration answered {} {}", r.status, r.json));
    }
    step(
        "phone",
        "HTTPS",
        format!(
            "POST /v1/devices → {} (terminal token issued, registered_at {})",
            r.status, r.json["registered_at"]
        ),
    );

    // The POS's own small receiver for the merchant's signed webhook events.
    let mut receiver = Receiver::start()
        .await
        .unwrap_or_else(|e| fail(format!("webhook receiver: {e}")));
    let r = pos
        .set_webhook(&receiver.url)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    match r.json["secret"].as_str() {
        Some(secret) if r.status == 200 => receiver.set_secret(secret),
        _ => fail(format!("webhook endpoint answered {} {}", r.status, r.json)),
    }
    step(
        "POS",
        "HTTPS",
        format!(
            "PUT /v1/webhook-endpoint {} → {} (signing secret shown once)",
            receiver.url, r.status
        ),
    );

    let (before, _) = pos
        .settled("KRW")
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let beacon = device.beacon();
    step(
        "POS",
        "beacon",
        format!(
            "hears unique code {} and proof {}; forwards both",
            beacon.code, beacon.proof
        ),
    );
    let r = pos
        .request_payment(
            &beacon,
            4500,
            "KRW",
            Some("demo latte"),
            &unique_id("idem-"),
        )
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    if r.status != 201 {
        fail(format!("payment request answered {} {}", r.status, r.json));
    }
    let payment_id = r.json["payment_id"].as_str().unwrap_or_default().to_owned();
    step(
        "POS",
        "HTTPS ch.1",
        format!(
            "POST /v1/payments 4500 KRW → {} {} {}, expires {}",
            r.status, payment_id, r.json["status"], r.json["expires_at"]
        ),
    );

    let r = phone
        .pending()
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    let payment = r.json["payments"]
        .as_array()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p["payment_id"] == payment_id.as_str())
                .cloned()
        })
        .unwrap_or_else(|| fail(format!("the phone does not see the payment: {}", r.json)));
    step(
        "phone",
        "HTTPS ch.2",
        format!(
            "GET /v1/pending-payments → {} ({} at merchant {})",
            r.status, payment["amount"], payment["merchant_id"]
        ),
    );

    let (code, counter) = device.authorize(&payment);
    step(
        "device",
        "short-range",
        format!(
            "user approves; auth code {}… with counter {counter}",
            &code[..12]
        ),
    );
    let r = phone
        .confirm(&payment_id, &code, &counter)
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    if r.status != 200 {
        fail(format!("confirmation answered {} {}", r.status, r.json));
    }
    step(
        "phone",
        "HTTPS ch.2",
        format!(
            "POST /v1/payments/{payment_id}/confirm → {} {}",
            r.status, r.json["status"]
        ),
    );

    let t = Instant::now();
    let r = pos
        .wait_for_status(&payment_id, "settled", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    if r.json["status"] != "settled" {
        fail(format!("not settled after 30 s: {}", r.json));
    }
    step(
        "server",
        "SQS",
        format!(
            "settlement wrote the ledger; settled_at {} ({} ms after confirm)",
            r.json["settled_at"],
            t.elapsed().as_millis()
        ),
    );
    step(
        "POS",
        "HTTPS",
        format!("GET /v1/payments/{payment_id} → {}", r.json["status"]),
    );

    // Both events of this payment, each on its own line once its signature checks out.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let Some(got) = receiver.next(Duration::from_secs(10)).await else {
            fail(format!("webhook events: only {seen:?} within 10 s"));
        };
        let kind = got.event["type"].as_str().unwrap_or_default().to_owned();
        if got.event["data"]["payment"]["payment_id"] != payment_id.as_str() || seen.contains(&kind)
        {
            continue;
        }
        if !got.verified {
            fail(format!("{kind}: the signature does not verify"));
        }
        step(
            "POS",
            "webhook",
            format!(
                "{kind} {} (payment {}), Twochan-Signature verified (t={})",
                got.event["id"].as_str().unwrap_or_default(),
                got.event["data"]["payment"]["status"],
                got.t
            ),
        );
        seen.push(kind);
    }
    let _ = pos.delete_webhook().await;

    let (after, count) = pos
        .settled("KRW")
        .await
        .unwrap_or_else(|e| fail(e.to_string()));
    step(
        "POS",
        "HTTPS",
        format!("GET /v1/balance → KRW settled {before} → {after} ({count} payments)"),
    );
    if after < before + 4500 {
        fail("the balance did not rise by the payment");
    }
    println!(
        "\nSettled in {:.1} s end to end.",
        started.elapsed().as_secs_f64()
    );
}
