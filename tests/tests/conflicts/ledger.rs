//! Races on the money: refunds of one payment with each other and with their twins, refunds with
//! the settlements that write the same balance.

use super::*;

/// Six refunds of 300 with their own keys and three twins of one key for 100, at once, on a
/// settled payment of 1000: refund transactions on the refund slot, the payment and the balance.
/// The contract notes say a refund that loses a race reads again and decides again, and twins
/// all get the one refund's 201: so exactly three 300s and the 100 are made, every other answer
/// is `422 refund_exceeds_payment`, none is a 503, and payment, refunds and balance agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_of_one_payment_race_each_other_and_their_twins() {
    let race = Race::new("refunds vs refunds and twins").await;
    race.until_refused(async |round| {
        let m = race.merchant().await;
        let mut p = race.paired().await;
        let paid = race.confirmed(&m, &mut p, 1_000).await;
        race.settle(&paid).await;
        let id = paid.payment_id.to_string();
        let keys: Vec<String> = (0..6).map(|_| unique_id("rk-")).collect();
        let twin_key = unique_id("rk-twin-");
        let (own, twins) = tokio::join!(
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (race, m, id) = (&race, &m, &id);
                async move {
                    stagger(round, i).await;
                    race.refund(m, id, 300, key).await
                }
            })),
            join_all((0..3).map(|i| {
                let (race, m, id, key) = (&race, &m, &id, &twin_key);
                async move {
                    stagger(round, i + 2).await;
                    race.refund(m, id, 100, key).await
                }
            })),
        );
        let firsts: Vec<&Reply> = own.iter().chain(&twins).collect();
        race.count_503(&firsts);
        for r in &own {
            assert!(
                r.is(201, "") || r.is(422, "refund_exceeds_payment"),
                "a refund that lost a race decides again, it does not answer {} {}",
                r.status,
                r.body
            );
        }
        let made: Vec<&Reply> = own.iter().filter(|r| r.status == 201).collect();
        assert_eq!(made.len(), 3, "three of 300 fit beside the 100: {own:?}");
        let twin_id = twins[0].str("refund_id");
        for r in &twins {
            assert_eq!(r.status, 201, "every twin gets the one refund: {twins:?}");
            assert_eq!(r.str("refund_id"), twin_id, "{twins:?}");
        }
        assert_eq!(twins.iter().filter(|r| !r.replayed).count(), 1, "{twins:?}");
        let stored = race.payment(&id).await;
        assert_eq!(stored.refunded_amount, 1_000, "{stored:?}");
        let mut ids: Vec<String> = made.iter().map(|r| r.str("refund_id")).collect();
        ids.push(twin_id);
        ids.sort();
        let listed = race
            .call(
                Function::PaymentRequest,
                "GET",
                &format!("/v1/payments/{id}/refunds"),
                &m.key,
                None,
                None,
            )
            .await;
        let mut listed: Vec<String> = listed.body["refunds"]
            .as_array()
            .expect("refunds")
            .iter()
            .map(|r| r["refund_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        listed.sort();
        assert_eq!(listed, ids, "the stored refunds are the ones answered 201");
        assert_eq!(race.krw_balance(&m).await, (1_000, 1, 1_000, 0));
        // Each key keeps its answer.
        for (key, r) in keys.iter().zip(&own) {
            let again = race.refund(&m, &id, 300, key).await;
            assert_eq!(
                (again.status, again.replayed),
                (r.status, true),
                "{again:?}"
            );
            assert_eq!(again.body, r.body);
        }
    })
    .await;
}

/// Refunds of one settled payment while four other payments of the same merchant and currency
/// settle, each in its own settlement transaction: refunds and settlements all write the one
/// balance item. Settlement retries its conflicts; a refund reads again and decides again. At the
/// end the balance is exactly the settled payments and the refunds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_and_settlements_meet_on_the_balance() {
    let race = Race::new("refunds vs settlements on the balance").await;
    race.until_refused(async |round| {
        let m = race.merchant().await;
        let mut p = race.paired().await;
        let first = race.confirmed(&m, &mut p, 1_000).await;
        race.settle(&first).await;
        let mut others = Vec::new();
        for i in 0..4 {
            others.push(race.confirmed(&m, &mut p, 10 + i).await);
        }
        let id = first.payment_id.to_string();
        let keys: Vec<String> = (0..3).map(|_| unique_id("rk-")).collect();
        let (refunds, _) = tokio::join!(
            join_all(keys.iter().enumerate().map(|(i, key)| {
                let (race, m, id) = (&race, &m, &id);
                async move {
                    stagger(round, i).await;
                    race.refund(m, id, 200, key).await
                }
            })),
            join_all(others.iter().enumerate().map(|(i, paid)| {
                let race = &race;
                async move {
                    stagger(round, i + 1).await;
                    race.settle(paid).await
                }
            })),
        );
        let firsts: Vec<&Reply> = refunds.iter().collect();
        race.count_503(&firsts);
        for r in &refunds {
            assert_eq!(r.status, 201, "each refund fits: {r:?}");
        }
        for paid in &others {
            let stored = race.payment(paid.payment_id.as_str()).await;
            assert_eq!(stored.status, PaymentStatus::Settled);
            let legs = race
                .ctx
                .store
                .ledger_entries(&paid.payment_id)
                .await
                .unwrap();
            assert_eq!(legs.len(), 2, "{legs:?}");
        }
        let settled: u64 = 1_000 + others.iter().map(|p| p.amount.minor_units()).sum::<u64>();
        assert_eq!(
            race.krw_balance(&m).await,
            (settled, 5, 600, settled - 600),
            "the balance is the settled payments less the refunds"
        );
        assert_eq!(race.payment(&id).await.refunded_amount, 600);
    })
    .await;
}
