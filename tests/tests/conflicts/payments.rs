//! Races on one payment and its device's lock: the phone's confirm, decline and wrong codes,
//! the merchant's cancel, and the takeover of a lapsed lock.

use super::*;

/// Confirm (phone, right code), decline (phone) and cancel (merchant) of one pending payment at
/// once: three transactions on the payment and its device. Exactly one of them wins, at once or
/// after the 503'd ones are retried; the stored status is the winner's and the device agrees
/// (lock released; the counter moved only by a confirmation).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_decline_and_cancel_of_one_payment_race() {
    let race = Race::new("confirm vs decline vs cancel").await;
    let m = race.merchant().await;
    let mut p = race.paired().await;
    let finished = [(200, ""), (409, "payment_not_pending")];
    race.until_refused(async |round| {
        let key = unique_id("k-");
        let created = race.pay(&m, &p.device, 100 + round as u64, &key).await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let seen = race.device(&p.device).await;
        let (c, d, x) = tokio::join!(
            race.confirm(&p.token, &id, &code, &counter),
            async {
                stagger(round, 1).await;
                race.decline(&p.token, &id).await
            },
            async {
                stagger(round, 2).await;
                race.cancel(&m, &id).await
            },
        );
        within("confirm", &c, &finished);
        within("decline", &d, &finished);
        within("cancel", &x, &finished);
        race.count_503(&[&c, &d, &x]);
        let first_wins = [&c, &d, &x].iter().filter(|r| r.status == 200).count();
        assert!(first_wins <= 1, "two winners: {c:?} {d:?} {x:?}");
        // A 503 wrote nothing: its retry decides on what is stored now.
        let c = unless_503("confirm", c, || {
            race.confirm(&p.token, &id, &code, &counter)
        })
        .await;
        let d = unless_503("decline", d, || race.decline(&p.token, &id)).await;
        let x = unless_503("cancel", x, || race.cancel(&m, &id)).await;
        let winners: Vec<(&str, &Reply)> = [("confirmed", &c), ("declined", &d), ("canceled", &x)]
            .into_iter()
            .filter(|(_, r)| r.status == 200)
            .collect();
        assert_eq!(winners.len(), 1, "one winner: {c:?} {d:?} {x:?}");
        let (status, reply) = winners[0];
        assert_eq!(reply.str("status"), status, "{reply:?}");
        let stored = race.payment(&id).await;
        assert_eq!(stored.status.as_str(), status, "stored {stored:?}");
        let device = race.device(&p.device).await;
        assert_eq!(device.pending, None, "the lock goes with the winner");
        let expected_counter = if status == "confirmed" {
            counter.parse::<u64>().unwrap()
        } else {
            seen.last_counter.get()
        };
        assert_eq!(device.last_counter.get(), expected_counter);
        assert_eq!(device.failed_auth, 0);
    })
    .await;
}

/// Three wrong codes and the right one on one payment at once: wrong-code and confirm
/// transactions on the payment and its device. Every wrong code answered 422 was counted once on
/// the payment (and on the device until the right code reset it); none answered otherwise was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_codes_race_the_right_code() {
    let race = Race::new("wrong codes vs the right code").await;
    let m = race.merchant().await;
    let mut p = race.paired().await;
    race.until_refused(async |round| {
        let created = race
            .pay(&m, &p.device, 500 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(created.status, 201, "{created:?}");
        let id = created.str("payment_id");
        let (code, counter) = p.device.authorize(&created.body);
        let wrong: Vec<String> = (0..3)
            .map(|i| format!("{:064x}", round * 16 + i + 1))
            .collect();
        let (right, wrongs) = tokio::join!(
            async {
                stagger(round, 3).await;
                race.confirm(&p.token, &id, &code, &counter).await
            },
            join_all(wrong.iter().enumerate().map(|(i, bad)| {
                let (race, id, token, counter) = (&race, &id, &p.token, &counter);
                async move {
                    stagger(round, i).await;
                    race.confirm(token, id, bad, counter).await
                }
            })),
        );
        within("the right code", &right, &[(200, "")]);
        for r in &wrongs {
            within(
                "a wrong code",
                r,
                &[(422, "invalid_auth_code"), (409, "payment_not_pending")],
            );
        }
        let mut firsts: Vec<&Reply> = wrongs.iter().collect();
        firsts.push(&right);
        race.count_503(&firsts);
        let counted = wrongs
            .iter()
            .filter(|r| r.is(422, "invalid_auth_code"))
            .count() as u32;
        let stored = race.payment(&id).await;
        let device = race.device(&p.device).await;
        assert_eq!(
            stored.failed_attempts, counted,
            "every 422 counted once on the payment, nothing else: {wrongs:?}"
        );
        if right.status == 200 {
            assert_eq!(stored.status, PaymentStatus::Confirmed);
            assert_eq!(device.failed_auth, 0, "the accepted code resets the device");
        } else {
            assert_eq!(stored.status, PaymentStatus::Pending);
            assert_eq!(
                device.failed_auth, counted,
                "every 422 counted on the device"
            );
            let r = retried("confirm", || race.confirm(&p.token, &id, &code, &counter)).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(race.device(&p.device).await.failed_auth, 0);
        }
        let device = race.device(&p.device).await;
        assert_eq!(device.last_counter.get(), counter.parse::<u64>().unwrap());
        assert_eq!(device.pending, None);
    })
    .await;
}

/// A pending payment whose lifetime ran out: its confirmation (410) and its cancel (409) record
/// the expiry and try to free its lock (a transaction on the device), while new payment requests
/// take the lapsed lock over (a single `UpdateItem` on the device). One new payment holds the
/// code in the end; the old one was never confirmed nor canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lapsed_lock_is_taken_over_while_its_expiry_is_recorded() {
    let race = Race::new("lapsed lock takeover vs expiry").await;
    let m = race.merchant().await;
    let mut p = race.paired().await;
    let asked = [(201, ""), (409, "device_busy")];
    // Recording the expiry and freeing its lock are two single writes, as is the takeover: no
    // transaction is involved, so the layer has nothing to refuse; the race is run all the same.
    race.single_writes(8, async |round| {
        let old = race
            .pay(&m, &p.device, 3_000 + round as u64, &unique_id("k-"))
            .await;
        assert_eq!(old.status, 201, "{old:?}");
        let old_id = old.str("payment_id");
        let (code, counter) = p.device.authorize(&old.body);
        race.ctx.backdate(&old.body).await;
        let keys: Vec<String> = (0..3).map(|_| unique_id("k-")).collect();
        let (c, x, pays) = tokio::join!(
            race.confirm(&p.token, &old_id, &code, &counter),
            race.cancel(&m, &old_id),
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (race, m, device) = (&race, &m, &p.device);
                async move {
                    stagger(round, i + 1).await;
                    race.pay(m, device, 4_000 + i as u64, key).await
                }
            })),
        );
        within(
            "confirm of a lapsed payment",
            &c,
            &[(410, "payment_expired")],
        );
        within(
            "cancel of a lapsed payment",
            &x,
            &[(409, "payment_not_pending")],
        );
        for r in &pays {
            within("payment request", r, &asked);
        }
        let mut firsts: Vec<&Reply> = pays.iter().collect();
        firsts.extend([&c, &x]);
        race.count_503(&firsts);
        let finals = race
            .retried_payments(&m, &p.device, 4_000, &keys, &pays, &asked)
            .await;
        let id = the_one_payment(&finals);
        let device = race.device(&p.device).await;
        assert_eq!(
            device.pending.as_ref().map(|(held, _)| held.to_string()),
            Some(id.clone())
        );
        let stale = race.payment(&old_id).await;
        assert!(
            matches!(
                stale.status,
                PaymentStatus::Expired | PaymentStatus::Pending
            ) && stale.effective_status(Timestamp::now()) == PaymentStatus::Expired,
            "the lapsed payment only expires: {stale:?}"
        );
        let freed = retried("cancel", || race.cancel(&m, &id)).await;
        assert_eq!(freed.status, 200, "{freed:?}");
    })
    .await;
}
