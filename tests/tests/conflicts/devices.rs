//! Races of registrations and deregistrations with each other, with the payment requests that
//! take their code's lock and with a confirmation.

use super::*;

/// The phone registers its device again (a new token: a transaction on the device and the
/// tokens) while POS terminals ask for payments on its code (the lock: a single `UpdateItem` on
/// the device, refused while the registration is in flight). One payment is made however the
/// 503s fall; a 503'd request retried with its key gets 201 or the kept `409 device_busy`; the
/// new token is the only one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_meet_a_re_registration_of_their_code() {
    let race = Race::new("payment requests vs re-registration").await;
    let m = race.merchant().await;
    let mut p = race.paired().await;
    race.until_refused(async |round| {
        let keys: Vec<String> = (0..4).map(|_| unique_id("k-")).collect();
        let old_token = p.token.clone();
        // Every other round the requests go the moment the registration sends its transaction
        // (its 4th call: token, challenge, device and terminal, then the transaction), so that
        // they meet it in flight; the other rounds they go at staggered times.
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        let probe = if round % 2 == 0 {
            let go = go.clone();
            Probe::with_hook(3, move || go.add_permits(16))
        } else {
            go.add_permits(16);
            Probe::new()
        };
        let app = race.app_with(&probe);
        let (reg, pays) = tokio::join!(
            async {
                let r = race
                    .register_on(&app, &p.device, &p.terminal, &old_token)
                    .await;
                go.add_permits(16);
                r
            },
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (race, m, device, go) = (&race, &m, &p.device, &go);
                async move {
                    drop(go.acquire().await.expect("open"));
                    if round % 2 == 1 {
                        stagger(round, i + 2).await;
                    }
                    race.pay(m, device, 1_000 + i as u64, key).await
                }
            })),
        );
        within("re-registration", &reg, &[(200, "")]);
        let asked = [(201, ""), (409, "device_busy")];
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.push(&reg);
        race.count_503(&firsts);
        // The registration used its challenge up whatever it answered: a retry asks for another.
        let reg = unless_503("re-registration", reg, || {
            race.register(&p.device, &p.terminal, &old_token)
        })
        .await;
        assert_eq!(reg.status, 200, "{reg:?}");
        p.token = reg.str("terminal_token");
        let finals = race
            .retried_payments(&m, &p.device, 1_000, &keys, &pays, &asked)
            .await;
        let id = the_one_payment(&finals);
        let device = race.device(&p.device).await;
        assert_eq!(
            device.pending.as_ref().map(|(held, _)| held.to_string()),
            Some(id.clone()),
            "the lock is the payment's"
        );
        assert_eq!(race.payment(&id).await.status, PaymentStatus::Pending);
        // Every key keeps its answer: the same again, replayed.
        for (i, (key, r)) in keys.iter().zip(&finals).enumerate() {
            let again = race.pay(&m, &p.device, 1_000 + i as u64, key).await;
            assert_eq!(
                (again.status, again.replayed),
                (r.status, true),
                "{again:?}"
            );
            assert_eq!(again.body["payment_id"], r.body["payment_id"]);
        }
        // Only the newest token is current, and its phone sees the payment.
        let seen = race.pending_of(&p.token).await;
        assert_eq!(seen.status, 200, "{seen:?}");
        assert_eq!(seen.body["payments"][0]["payment_id"], json!(id));
        assert!(race.pending_of(&old_token).await.is(401, "unauthorized"));
        let freed = retried("cancel", || race.cancel(&m, &id)).await;
        assert_eq!(freed.status, 200, "{freed:?}");
    })
    .await;
}

/// The phone deregisters its device while POS terminals ask for payments on it: the lock's
/// `UpdateItem` and the payment's `PutItem` into its slot meet the deregistration's transaction
/// (device, token, terminal, and the lock's payment or its slot). At the end the code is free,
/// no payment of it is left pending (each one answered 201 was canceled), and every key keeps the
/// answer its request finally got.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_requests_race_the_deregistration_of_their_code() {
    let race = Race::new("payment requests vs deregistration").await;
    let m = race.merchant().await;
    let asked = [(201, ""), (404, "unknown_device"), (409, "device_busy")];
    race.until_refused(async |round| {
        let p = race.paired().await;
        let keys: Vec<String> = (0..4).map(|_| unique_id("k-")).collect();
        let (gone, pays) = tokio::join!(
            async {
                stagger(round, 0).await;
                race.deregister(&p.token, &p.device).await
            },
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (race, m, device) = (&race, &m, &p.device);
                async move {
                    stagger(round, i + 1).await;
                    race.pay(m, device, 2_000 + i as u64, key).await
                }
            })),
        );
        within("deregistration", &gone, &[(204, "")]);
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.push(&gone);
        race.count_503(&firsts);
        race.deregistered(&gone, &p.token, &p.device).await;
        let finals = race
            .retried_payments(&m, &p.device, 2_000, &keys, &pays, &asked)
            .await;
        let device = race.device(&p.device).await;
        assert!(device.registration.is_none(), "deregistered: {device:?}");
        assert_eq!(device.pending, None, "no lock left: {device:?}");
        assert!(race.pending_of(&p.token).await.is(401, "unauthorized"));
        let terminal = race
            .raw(format!("TERMINAL#{}", p.terminal), "TERMINAL")
            .await
            .expect("the terminal item");
        assert_eq!(
            terminal.get("devices").and_then(|v| v.as_n().ok()),
            Some(&"0".to_owned()),
            "the terminal holds nothing: {terminal:?}"
        );
        for (key, r) in keys.iter().zip(&finals) {
            match (r.status, race.slot(&m, key).await) {
                (201, Some(SlotRecord::Payment { payment, .. })) => {
                    assert_eq!(payment.payment_id.as_str(), r.str("payment_id"));
                    assert_eq!(
                        payment.status,
                        PaymentStatus::Canceled,
                        "a payment answered 201 on a deregistered code is canceled"
                    );
                }
                (status, Some(SlotRecord::Rejected { response, .. })) if status != 201 => {
                    assert_eq!(
                        response.refusal.code(),
                        r.code(),
                        "the key keeps {response:?}"
                    );
                }
                (_, kept) => panic!("key {key} answered {r:?} but keeps {kept:?}"),
            }
        }
    })
    .await;
}

/// The phone confirms a payment (right code) while it deregisters the payment's code: the
/// confirmation's transaction (payment + device) and the deregistration's (device, token,
/// terminal, and the payment it cancels) meet on the device and the payment. The payment ends
/// `confirmed` exactly when a confirmation was answered 200, `canceled` otherwise; the code ends
/// free either way, and the device counter moved only with the confirmation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_races_the_deregistration_of_its_code() {
    let race = Race::new("confirm vs deregistration").await;
    let m = race.merchant().await;
    let confirmed = [
        (200, ""),
        (401, "unauthorized"),
        (409, "payment_not_pending"),
    ];
    race.until_refused(async |round| {
        let mut p = race.paired().await;
        let created = race
            .pay(&m, &p.device, 700 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let (c, gone) = tokio::join!(
            async {
                stagger(round, 0).await;
                race.confirm(&p.token, &id, &code, &counter).await
            },
            async {
                stagger(round, 1).await;
                race.deregister(&p.token, &p.device).await
            },
        );
        within("confirm", &c, &confirmed);
        within("deregistration", &gone, &[(204, "")]);
        race.count_503(&[&c, &gone]);
        let c = unless_503("confirm", c, || {
            race.confirm(&p.token, &id, &code, &counter)
        })
        .await;
        within("confirm, retried", &c, &confirmed);
        race.deregistered(&gone, &p.token, &p.device).await;
        let stored = race.payment(&id).await;
        let device = race.device(&p.device).await;
        assert!(device.registration.is_none(), "deregistered: {device:?}");
        assert_eq!(device.pending, None, "no lock left: {device:?}");
        if c.status == 200 {
            assert_eq!(stored.status, PaymentStatus::Confirmed, "{c:?}");
            assert_eq!(device.last_counter.get(), counter.parse::<u64>().unwrap());
        } else {
            assert_eq!(stored.status, PaymentStatus::Canceled, "{c:?}");
            assert!(device.last_counter.get() < counter.parse::<u64>().unwrap());
        }
    })
    .await;
}

/// A payment request that has taken its code's lock and is about to store its payment while the
/// phone deregisters the code: the deregistration finds the lock without its payment and keeps a
/// 404 in the request's slot, in the transaction that frees the device. The request's `PutItem`
/// into that slot comes before that transaction, during it (refused by the layer) or after it
/// (the slot is taken): the request pauses before the `PutItem` for a different time each round
/// (a failpoint hook), until the layer has refused such a put. Whatever it answers, the code ends
/// free, the key keeps one answer (a canceled payment's 201, or the 404), and a retry with the key
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_is_stored_while_its_code_is_deregistered() {
    let race = Race::new("payment put vs the deregistration's kept 404").await;
    let m = race.merchant().await;
    let asked = [(201, ""), (404, "unknown_device")];
    race.until(
        |refused| refused.by_operation.contains_key("PutItem"),
        async |round| {
            let p = race.paired().await;
            let key = unique_id("k-");
            let locked = Arc::new(tokio::sync::Notify::new());
            // Calls of the request: BatchGetItem (caller and device), UpdateItem (lock), PutItem.
            let delay = Duration::from_millis(2 + (round as u64 * 7) % 90);
            let probe = {
                let locked = locked.clone();
                Probe::with_hook(2, move || {
                    locked.notify_one();
                    // The worker's other tasks (connections the deregistration uses) move on.
                    tokio::task::block_in_place(|| std::thread::sleep(delay));
                })
            };
            let app = race.app_with(&probe);
            let body = payment_body(&p.device, 800);
            // A task of its own: the hook's pause blocks its thread, not the deregistration.
            let request = {
                let (bearer, key) = (m.key.clone(), key.clone());
                tokio::spawn(async move {
                    call_on(
                        &app,
                        Function::PaymentRequest,
                        "POST",
                        "/v1/payments",
                        &bearer,
                        Some(&key),
                        Some(body),
                    )
                    .await
                })
            };
            locked.notified().await;
            let gone = race.deregister(&p.token, &p.device).await;
            let paid = request.await.expect("the payment request's task");
            within("payment request", &paid, &asked);
            within("deregistration", &gone, &[(204, "")]);
            race.count_503(&[&paid, &gone]);
            race.deregistered(&gone, &p.token, &p.device).await;
            let paid = unless_503("payment request", paid, || {
                race.pay(&m, &p.device, 800, &key)
            })
            .await;
            within("payment request, retried", &paid, &asked);
            let device = race.device(&p.device).await;
            assert!(device.registration.is_none(), "deregistered: {device:?}");
            assert_eq!(device.pending, None, "no lock left: {device:?}");
            match (paid.status, race.slot(&m, &key).await) {
                (201, Some(SlotRecord::Payment { payment, .. })) => {
                    assert_eq!(payment.payment_id.as_str(), paid.str("payment_id"));
                    assert_eq!(payment.status, PaymentStatus::Canceled);
                }
                (404, Some(SlotRecord::Rejected { response, .. })) => {
                    assert_eq!(response.refusal.code(), "unknown_device", "{response:?}");
                }
                (_, kept) => panic!("answered {paid:?} but the key keeps {kept:?}"),
            }
            let again = race.pay(&m, &p.device, 800, &key).await;
            assert_eq!(
                (again.status, again.replayed),
                (paid.status, true),
                "{again:?}"
            );
            assert_eq!(again.body["payment_id"], paid.body["payment_id"]);
        },
    )
    .await;
}

/// On one terminal at once: its phone deregisters device A (A's token), registers device B with
/// A's token as its authority, and registers A again with that token. Device, terminal and
/// tokens are written together by each transaction. Whatever wins, the terminal's holding count
/// is the number of devices registered to it, a token exists exactly while it is its device's
/// current one, and each success is visible in the end unless a later success undid it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_and_a_deregistration_on_one_terminal_race() {
    let race = Race::new("registrations vs deregistration on one terminal").await;
    let registration = [
        (200, ""),
        (201, ""),
        (401, "unauthorized"),
        (409, "terminal_id_taken"),
        (409, "device_already_registered"),
    ];
    race.until_refused(async |round| {
        let a = race.paired().await;
        let b = race.ctx.device();
        let (gone, added, again) = tokio::join!(
            race.deregister(&a.token, &a.device),
            async {
                stagger(round, 1).await;
                race.register(&b, &a.terminal, &a.token).await
            },
            async {
                stagger(round, 2).await;
                race.register(&a.device, &a.terminal, &a.token).await
            },
        );
        within("deregistration", &gone, &[(204, ""), (401, "unauthorized")]);
        within("registering another device", &added, &registration);
        within("registering the same device again", &again, &registration);
        race.count_503(&[&gone, &added, &again]);
        let dev_a = race.device(&a.device).await;
        let dev_b = race.ctx.store.device(&b.code).await.expect("read device B");
        let here = |d: Option<&twochan_domain::ports::Device>| {
            d.and_then(|d| d.registration.as_ref())
                .filter(|r| r.terminal_id.as_str() == a.terminal)
                .map(|r| r.token_hash.as_str().to_owned())
        };
        let (current_a, current_b) = (here(Some(&dev_a)), here(dev_b.as_ref()));
        let terminal = race
            .raw(format!("TERMINAL#{}", a.terminal), "TERMINAL")
            .await
            .expect("the terminal item");
        let holding = terminal
            .get("devices")
            .and_then(|v| v.as_n().ok())
            .cloned()
            .unwrap_or_else(|| "0".into());
        let registered = u32::from(current_a.is_some()) + u32::from(current_b.is_some());
        assert_eq!(
            holding,
            registered.to_string(),
            "holding count {holding} with A {current_a:?}, B {current_b:?}; answers {gone:?} {added:?} {again:?}"
        );
        let mut tokens = vec![a.token.clone()];
        tokens.extend(
            [&added, &again]
                .iter()
                .filter(|r| r.status == 200 || r.status == 201)
                .map(|r| r.str("terminal_token")),
        );
        for token in &tokens {
            let hash = SecretHash::of(token);
            let stored = race.raw(format!("TOKEN#{}", hash.as_str()), "TOKEN").await;
            let current = [&current_a, &current_b]
                .iter()
                .any(|c| c.as_deref() == Some(hash.as_str()));
            assert_eq!(
                stored.is_some(),
                current,
                "a token exists exactly while it is current; answers {gone:?} {added:?} {again:?}"
            );
        }
        if gone.status == 204 {
            assert_eq!(
                current_a, None,
                "A was deregistered and nothing could bring it back"
            );
        }
        if added.status == 201 {
            assert_eq!(
                current_b,
                Some(
                    SecretHash::of(&added.str("terminal_token"))
                        .as_str()
                        .to_owned()
                )
            );
        }
        if again.status == 200 && gone.status != 204 {
            assert_eq!(
                current_a,
                Some(
                    SecretHash::of(&again.str("terminal_token"))
                        .as_str()
                        .to_owned()
                )
            );
        }
    })
    .await;
}
