//! Concurrency is the normal case: many POS terminals on one code, retries with one key, phones
//! confirming twice at once.

use std::time::Duration;

use crate::common::Harness;
use futures_util::future::join_all;
use twochan_tools::unique_id;

#[tokio::test]
async fn sixteen_concurrent_requests_on_one_code_make_exactly_one_payment() {
    let ctx = Harness::new().await;
    let (device, phone) = ctx.paired().await;
    let mut terminals = Vec::new();
    for _ in 0..4 {
        terminals.push(ctx.pos().await);
    }
    let requests = (0..16).map(|i| {
        let pos = terminals[i % 4].clone();
        let beacon = device.beacon();
        async move {
            pos.request_payment(&beacon, 100 + i as u64, "KRW", None, &unique_id("k-"))
                .await
                .unwrap()
        }
    });
    let answers = join_all(requests).await;
    let created: Vec<_> = answers.iter().filter(|r| r.status == 201).collect();
    let busy = answers
        .iter()
        .filter(|r| r.status == 409 && r.error_code() == Some("device_busy"))
        .count();
    assert_eq!(
        created.len(),
        1,
        "{:?}",
        answers
            .iter()
            .map(|r| (r.status, r.json.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(busy, 15);
    let pending = phone.pending().await.unwrap();
    assert_eq!(pending.json["payments"].as_array().unwrap().len(), 1);
    assert_eq!(
        pending.json["payments"][0]["payment_id"],
        created[0].json["payment_id"]
    );
}

#[tokio::test]
async fn concurrent_retries_with_one_key_make_one_payment() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (device, phone) = ctx.paired().await;
    let key = unique_id("retry-");
    let beacon = device.beacon();
    let answers =
        join_all((0..8).map(|_| pos.request_payment(&beacon, 999, "KRW", None, &key))).await;
    let answers: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    let mut ids = std::collections::HashSet::new();
    for r in &answers {
        match (r.status.as_u16(), r.error_code()) {
            (201, _) => {
                ids.insert(r.json["payment_id"].as_str().unwrap().to_owned());
            }
            (409, Some("idempotency_key_in_use")) => assert_eq!(r.header("retry-after"), Some("1")),
            other => panic!("unexpected answer {other:?}: {}", r.json),
        }
    }
    assert_eq!(ids.len(), 1, "one payment, however many retries: {ids:?}");
    // Once the first finished, the key replays.
    let replay = pos
        .request_payment(&device.beacon(), 999, "KRW", None, &key)
        .await
        .unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        phone.pending().await.unwrap().json["payments"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn concurrent_identical_confirmations_settle_once() {
    let ctx = Harness::new().await;
    let pos = ctx.pos().await;
    let (mut device, phone) = ctx.paired().await;
    let p = ctx.pending_payment(&pos, &device, 777).await;
    let id = p["payment_id"].as_str().unwrap().to_owned();
    let (code, counter) = device.authorize(&p);
    let answers = join_all((0..8).map(|_| phone.confirm(&id, &code, &counter))).await;
    for r in answers {
        let r = r.unwrap();
        assert_eq!(
            r.status, 200,
            "every copy of the accepted confirmation is answered 200: {}",
            r.json
        );
    }
    let settled = pos
        .wait_for_status(&id, "settled", Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(settled.json["status"], "settled");
    // Let every extra enqueue drain, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pos.settled("KRW").await.unwrap(), (777, 1));
    assert_eq!(
        ctx.store
            .ledger_entries(&id.as_str().try_into().unwrap())
            .await
            .unwrap()
            .len(),
        2
    );
}
